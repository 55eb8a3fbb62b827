"""The dense tasks' core: task-aware lookup, the config's task defaults, the feature
pyramid of any encoder, the segmentation heads and the scene split."""

from __future__ import annotations

import pytest
import torch

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.components.encoders.torchvision_backbones import TorchvisionEncoder
from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UnknownComponentError, UserError
from imgxfer.data.scenes import IGNORE, align_scene_classes, scene_split
from imgxfer.nn.dense.features import Pyramid
from imgxfer.nn.dense.model import HEADS, DenseModel, check_head
from imgxfer.plugin.registry import Registry
from imgxfer.plugin.testing import tiny_scenes


def test_same_name_for_another_task_is_another_component(host) -> None:
    registry = host.registry
    classify = registry.get("adapters", "finetune")
    segment = registry.get("adapters", "finetune", "segment")
    assert classify is not segment and "segment" in segment.tasks
    assert registry.get("adapters", "finetune", "detect") is segment
    # Encoders serve every task; datasets only those they declare.
    assert registry.get("encoders", "smallcnn", "detect").name == "smallcnn"
    assert "advent" in registry.names("adapters", "segment")
    assert "advent" not in registry.names("adapters", "detect")
    assert "dann" not in registry.names("adapters", "segment")


@pytest.mark.parametrize("kind, name, task, says", [
    ("adapters", "advent", "classify", "'advent' is for --task segment, not --task classify"),
    ("adapters", "advent", "detect", "is for --task segment, not --task detect"),
    ("adapters", "dann", "segment", "'dann' is for --task classify"),
    ("datasets", "tiny-scenes", "classify", "is for --task segment or detect"),
    ("datasets", "tiny-source", "segment", "is for --task classify"),
])
def test_a_component_of_another_task_is_one_sentence(host, kind, name, task, says) -> None:
    with pytest.raises(UnknownComponentError, match=says):
        host.registry.get(kind, name, task)


def test_registering_a_task_that_does_not_exist_fails() -> None:
    def factory() -> None: ...
    factory.tasks = ("paint",)
    with pytest.raises(ValueError, match="tasks are classify, segment, detect"):
        Registry().add("adapters", "x", factory, "p")


def test_dense_task_takes_its_defaults_where_classification_ones_stand() -> None:
    config = RunConfig(task="segment").for_task()
    assert (config.source, config.target) == ("digit-scenes:syndigits", "digit-scenes:mnist-m")
    assert config.generator == "none" and config.name == "segment-syndigits-to-mnist-m"
    kept = RunConfig(task="detect", source="coco:a.json", target="coco:b.json",
                     synthesis="translate").for_task()
    assert (kept.source, kept.target, kept.generator) == ("coco:a.json", "coco:b.json", "gan")
    assert RunConfig().for_task() == RunConfig()
    with pytest.raises(UserError, match="--head unet chooses a segmentation"):
        RunConfig(head="unet").for_task()
    with pytest.raises(UserError, match="task must be one of"):
        RunConfig(task="paint").for_task()


def test_the_generator_translates_scenes_at_most_32_pixels_wide(host) -> None:
    from imgxfer.tasks.dense.run import GENERATOR_SIDE, fit_to_scenes

    config = RunConfig(task="segment", generator="gan", synthesis="translate").for_task()
    for side, generator_side in ((24, 16), (32, 32), (48, 32), (64, GENERATOR_SIDE)):
        fitted = fit_to_scenes(config, host.registry, tiny_scenes(n=2, size=side))
        assert fitted.options["encoder"]["input_size"] == side
        assert fitted.options["generator"]["image_size"] == generator_side
    config.options["generator"] = {"image_size": 64}  # the user's choice stands
    fitted = fit_to_scenes(config, host.registry, tiny_scenes(n=2, size=64))
    assert fitted.options["generator"]["image_size"] == 64


def test_heads_are_checked_against_the_task() -> None:
    assert check_head("", "segment") == "unet" and check_head("", "detect") == "centernet"
    with pytest.raises(UserError, match="head 'unet' is for --task segment, not --task detect"):
        check_head("unet", "detect")
    with pytest.raises(UserError, match="unknown head 'mask-rcnn'; heads for --task segment"):
        check_head("mask-rcnn", "segment")


@pytest.mark.parametrize("encoder", [SmallCNN(width=4, input_size=32, in_channels=3),
                                     TorchvisionEncoder("resnet18", input_size=64)])
def test_pyramid_finds_each_stage_of_an_encoder(encoder) -> None:
    size = encoder.input_size
    pyramid = Pyramid(encoder, size)
    maps = pyramid(torch.zeros(2, 3, *size))
    assert [m.shape[1] for m in maps] == pyramid.channels
    assert [size[0] // m.shape[-1] for m in maps] == pyramid.strides
    assert pyramid.strides == sorted(pyramid.strides) and pyramid.strides[0] == 2


@pytest.mark.parametrize("head", [n for n, h in HEADS.items() if h.task == "segment"])
def test_each_segmentation_head_gives_logits_at_the_input_size(head) -> None:
    torch.manual_seed(0)
    model = DenseModel(SmallCNN(width=4, input_size=32, in_channels=1), head, ["a", "b"],
                       (32, 32))
    logits = model(model.preprocess(torch.rand(2, 1, 32, 32)))
    assert logits.shape == (2, 3, 32, 32)
    masks = torch.randint(0, 3, (2, 32, 32))
    masks[0] = IGNORE  # a fully ignored scene adds nothing
    loss, _ = model.loss(logits, {"masks": masks})
    loss.backward()
    pseudo = model.pseudo_labels(logits, 0.99)["masks"]
    assert ((pseudo == IGNORE) | (pseudo < 3)).all()


def test_scene_split_is_seeded_disjoint_and_refuses_too_many_shots() -> None:
    data = tiny_scenes("d", n=20)
    split = scene_split(data, 3, test_fraction=0.3, seed=1)
    assert (len(split.labelled), len(split.test), len(split.unlabelled)) == (3, 6, 11)
    again = scene_split(data, 3, test_fraction=0.3, seed=1)
    assert torch.equal(split.test.masks, again.test.masks)
    with pytest.raises(UserError, match="too few for 14 labelled scenes"):
        scene_split(data, 14)


def test_the_generator_learns_only_from_scenes_that_hold_an_object() -> None:
    from imgxfer.tasks.dense.translate import generator_data, main_class

    source, target = tiny_scenes("s", n=6), tiny_scenes("t", n=4, seed=1)
    source.masks[:2] = 0  # masks are read before boxes
    target.masks[:1] = 0
    labels = main_class(source)
    assert labels[:2].tolist() == [-1, -1] and (labels[2:] >= 0).all()
    data = generator_data(source, labels, target, target, target)
    assert len(data.images) == 4 + 3 and torch.equal(data.labels[:4], labels[2:])
    assert torch.equal(data.images[:4], source.images.tensor()[2:])  # each with its label
    assert torch.equal(data.images[4:], target.images.tensor()[1:])
    assert data.domains == ["s"] * 4 + ["t"] * 3 and len(data.unlabelled) == 4
    source.masks[:] = 0
    with pytest.raises(UserError, match="no s scene holds an object"):
        generator_data(source, main_class(source), target, target, target)


def test_align_classes_renumbers_masks_and_box_labels() -> None:
    target = tiny_scenes("t", n=4)
    source = tiny_scenes("s", n=4)
    source.class_names = ["bar", "square"]  # same classes, other order
    aligned = align_scene_classes(source, target)
    swapped = {0: 0, 1: 2, 2: 1, IGNORE: IGNORE}
    expected = source.masks.clone().apply_(lambda v: swapped[v])
    assert torch.equal(aligned.masks, expected)
    assert torch.equal(aligned.box_labels[0], 1 - source.box_labels[0])
    other = tiny_scenes("o", n=4)
    other.class_names = ["square", "circle"]
    with pytest.raises(UserError, match="only in target: bar"):
        align_scene_classes(other, target)


def test_scenes_of_two_sizes_or_not_square_are_one_sentence() -> None:
    from imgxfer.tasks.dense.run import check_sizes

    config = RunConfig(task="segment")
    check_sizes(config, tiny_scenes("a", n=2), tiny_scenes("b", n=2))
    with pytest.raises(UserError, match="source 32x32, target 24x24; read both at one size"):
        check_sizes(config, tiny_scenes("a", n=2), tiny_scenes("b", n=2, size=24))
    wide = tiny_scenes("w", n=2)
    wide.images, wide.masks = wide.images.tensor()[..., :30], wide.masks[..., :30]
    from imgxfer.data.images import as_store

    wide.images = as_store(wide.images)
    with pytest.raises(UserError, match="source 32x30"):
        check_sizes(config, wide, tiny_scenes("b", n=2))


def test_style_randomises_the_labelled_scenes_colours_and_keeps_their_masks(monkeypatch) -> None:
    """--augment style in a dense run: each labelled batch is recoloured (grey made RGB)
    from the recipe's own generator, so the batches drawn and the masks stay the same."""
    from imgxfer.core.budget import Budget
    from imgxfer.nn.dense import training

    scenes = tiny_scenes("s", 8, size=32, seed=0)

    def run(colours: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The images the model read and the masks its loss was given, per step."""
        torch.manual_seed(0)
        model = DenseModel(SmallCNN(width=4, input_size=32, in_channels=3), "fcn", ["a", "b"],
                           (32, 32))
        inputs: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        forward, loss = model.forward, model.loss
        monkeypatch.setattr(model, "forward", lambda x: forward(inputs.append(x) or x))
        monkeypatch.setattr(model, "loss", lambda out, truth: loss(
            out, masks.append(truth["masks"]) or truth))
        training.train(model, {"source": (scenes, 1.0)},
                       training.Recipe(batch_size=4, colours=colours),
                       budget=Budget(2).start(), device=torch.device("cpu"))
        return inputs, masks

    (plain, plain_masks), (styled, styled_masks), (again, _) = run(False), run(True), run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain_masks, styled_masks, strict=True))
    assert plain[0].shape[1] == styled[0].shape[1] == 3  # the encoder reads RGB
    assert not torch.equal(plain[0], styled[0])  # the same scenes in other colours
    assert all(torch.equal(a, b) for a, b in zip(styled, again, strict=True))  # seeded


def test_a_dense_run_refuses_a_warping_augmentation() -> None:
    from imgxfer.nn.dense.training import colours_for

    assert colours_for("style") and not colours_for("") and not colours_for("none")
    with pytest.raises(UserError, match="augments colours only"):
        colours_for("light", "detect")
