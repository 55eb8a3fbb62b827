"""Augmentation policies (imgxfer.nn.augmentation) and fine-tuning regularisers
(imgxfer.components.adapters.regularizers): what each does to images and losses, seeding, options."""

from __future__ import annotations

import pytest
import torch

from imgxfer.components.adapters.regularizers import Regularization, mixed_cross_entropy
from imgxfer.core.errors import UserError
from imgxfer.nn.augmentation import POLICIES, Augmentation
from imgxfer.plugin.registry import Registry


def digits_like(n: int = 8, channels: int = 3) -> torch.Tensor:
    """Dark images with a bright bar, so warps and erasing visibly change them."""
    x = torch.zeros(n, channels, 16, 16)
    x[:, :, 4:12, 7:9] = 1.0
    return x


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_policy_is_seeded_bounded_and_leaves_the_global_generator(name, channels):
    images = digits_like(channels=channels)
    before = torch.get_rng_state()
    a = Augmentation(name)(images, generator=torch.Generator().manual_seed(1))
    b = Augmentation(name)(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)
    rgb = name == "style" and channels == 1  # style colours grey images
    assert a.shape == (8, 3 if rgb else channels, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    if name == "none":
        assert torch.equal(a, images)
    else:
        # Kornia's auto policies pick their operations once per batch, and one may leave
        # this image as it is (auto-contrast): look over a few batches.
        g = torch.Generator().manual_seed(2)
        outs = [Augmentation(name)(images, generator=g) for _ in range(4)]
        assert not all(torch.equal(a, c) for c in outs)
        assert max((c - images).abs().mean() for c in outs) > 0.01


def test_style_colours_grey_shapes_and_keeps_them_readable():
    """Each image gets its own colours, sometimes inverted channels, and the bar stays
    apart from its background in every channel (|scale| >= 0.5)."""
    images = digits_like(64, channels=1)
    out = Augmentation("style")(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 16, 16)
    background = out[:, :, 0, 0]  # a corner the warp leaves as background
    assert background.std(0).min() > 0.1  # colours differ between images and channels
    assert (background[:, 0] != background[:, 1]).float().mean() > 0.9
    bar = out[:, :, 6:10, 7:9].mean((2, 3))
    inverted = bar < background  # the bar darker than its background in that channel
    assert 0.2 < inverted.float().mean() < 0.8
    assert (bar - background).abs().mean(1).min() > 0.1


def test_strength_grows_from_light_to_strong():
    images = digits_like(64)
    g = torch.Generator().manual_seed(0)
    change = {name: (Augmentation(name)(images, generator=g) - images).abs().mean().item()
              for name in ("light", "strong")}
    assert 0 < change["light"] < change["strong"]


def test_light_is_a_small_warp_of_the_image():
    # Rotation <= 10 degrees, scale 0.9-1.1, shift <= 10%: the bar stays mostly in place.
    images = digits_like(32)
    out = Augmentation("light")(images, generator=torch.Generator().manual_seed(0))
    assert (out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))).sub(1).abs().max() < 0.35
    overlap = (out * images).sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert overlap.mean() > 0.3


def test_policy_runs_on_the_images_device_and_passes_gradients():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    Augmentation("strong")(x, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_empty_batch_and_unknown_policy():
    empty = torch.zeros(0, 3, 8, 8)
    assert Augmentation("strong")(empty, generator=torch.Generator()).shape[0] == 0
    with pytest.raises(UserError, match="augment must be one of none, light, strong"):
        Augmentation("heavy")
    with pytest.raises(UserError, match="or a comma list of color"):
        Augmentation("color,blur", discriminator=True)
    with pytest.raises(UserError, match="got 3"):  # --generator-opt augment=3
        Augmentation(3, discriminator=True)


# ------------------------------------------------------------------ regularisers
def test_l2sp_is_zero_at_the_start_and_grows_with_distance():
    net = torch.nn.Linear(4, 3)
    reg = Regularization(l2sp=0.5)
    start = reg.starting_point(net)
    assert float(reg.l2sp_penalty(start).detach()) == 0.0
    with torch.no_grad():
        net.weight.add_(1.0)
    assert float(reg.l2sp_penalty(start).detach()) == pytest.approx(0.5 * 12)
    assert Regularization().starting_point(net) == []


def test_bss_is_the_squared_smallest_singular_value():
    features = torch.randn(16, 5)
    expected = torch.linalg.svdvals(features)[-1] ** 2
    assert float(Regularization(bss=0.1).bss_penalty(features)) == pytest.approx(
        0.1 * float(expected), rel=1e-5)
    assert Regularization().bss_penalty(features) == 0.0


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixing_returns_both_labels_and_each_images_share(mix):
    # Image i is the constant i, so a mixed pixel tells which two images were mixed.
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 8, 8).contiguous()
    labels = torch.arange(8)
    g = torch.Generator().manual_seed(0)
    out, a, b, lam = Regularization(mix=mix).mix_batch(images, labels, g)
    assert torch.equal(a, labels) and ((lam >= 0) & (lam <= 1)).all()
    share_b = torch.where(a != b, (out[:, 0] == b.view(-1, 1, 1).float()).float().mean((1, 2))
                          if mix == "cutmix" else (out[:, 0, 0, 0] - a) / (b - a + (a == b)),
                          lam)
    assert torch.allclose(share_b, lam, atol=1e-4)
    same = Regularization(mix=mix).mix_batch(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(same[0], out)  # seeded
    unmixed = Regularization().mix_batch(images, labels, g)
    assert unmixed[0] is images and not unmixed[3].any()


def test_mixed_cross_entropy_interpolates_the_two_losses():
    logits = torch.randn(4, 3)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    ce = torch.nn.functional.cross_entropy
    lam = torch.full((4,), 0.25)
    expected = 0.75 * ce(logits, a) + 0.25 * ce(logits, b)
    assert float(mixed_cross_entropy(logits, a, b, lam, 0.0)) == pytest.approx(float(expected))
    assert float(mixed_cross_entropy(logits, a, b, torch.zeros(4), 0.0)) == pytest.approx(
        float(ce(logits, a)))


@pytest.mark.parametrize("options, words", [
    (dict(l2sp=-1.0), "finetune option l2sp must be zero or more"),
    (dict(bss=float("nan")), "finetune option bss must be zero or more"),
    (dict(mix="mixdown"), "finetune option mix must be one of none, mixup, cutmix"),
    (dict(augment="heavy"), "finetune option augment must be one of"),
])
def test_bad_regulariser_options_are_one_sentence(options, words):
    from imgxfer.components.adapters.finetune import FineTune

    with pytest.raises(UserError, match=words):
        FineTune(**options)


def test_l2sp_turns_the_encoders_weight_decay_off():
    from imgxfer.components.adapters.finetune import FineTune
    from imgxfer.components.encoders.smallcnn import SmallCNN
    from imgxfer.nn.classifier import Classifier

    model = Classifier(SmallCNN(width=4, input_size=8), 3)
    decays = [grp["weight_decay"] for grp in FineTune(l2sp=0.01).optimizer(model, None).param_groups]
    assert decays[0] == 0.0 and decays[1] > 0
    assert FineTune().optimizer(model, None).param_groups[0]["weight_decay"] > 0


def test_run_wide_augment_reaches_components_unless_their_options_set_one():
    from imgxfer.components.adapters.finetune import FineTune
    from imgxfer.components.generators.gan import ConditionalGAN

    registry = Registry()
    registry.add("adapters", "finetune", FineTune, "builtin")
    registry.add("generators", "gan", ConditionalGAN, "builtin")
    assert registry.build("adapters", "finetune", augment="strong").augmentation.policy == "strong"
    kept = registry.build("adapters", "finetune", {"augment": "none"}, augment="strong")
    assert kept.augmentation.policy == "none"
    assert registry.build("generators", "gan", augment="strong").augment.policy == "strong"


def test_a_runs_augment_reaches_encoder_adapters_and_gan_and_is_recorded(host, tmp_path):
    from imgxfer.core.config import from_mapping
    from imgxfer.tasks.classify.plan import prepare

    config = from_mapping({"source": "tiny-source", "target": "tiny-target", "shots": 3,
                           "generator": "gan", "compare": ["finetune", "self-training"],
                           "augment": "strong", "out": str(tmp_path),
                           "adapter": {"name": "finetune", "augment": "none"}})
    plan = prepare(config, host.registry)
    assert plan.encoder.augment == "strong" and plan.generator.augment.policy == "strong"
    # An adapter's own option wins over the run's.
    assert plan.adapters["finetune"].augmentation.policy == "none"
    assert plan.adapters["self-training"].augmentation.policy == "strong"
    assert plan.adapters["self-training"].strong.policy == "strong"
    # Without --augment every component keeps its own default.
    plain = prepare(from_mapping({"source": "tiny-source", "target": "tiny-target",
                                  "shots": 3, "generator": "gan", "out": str(tmp_path)}),
                    host.registry)
    assert plain.encoder.augment == plain.generator.augment.policy == "light"
    assert plain.adapters["finetune"].augmentation.policy == "light"
    with pytest.raises(UserError, match="augment must be one of"):
        prepare(from_mapping({"augment": "heavy", "out": str(tmp_path)}), host.registry)


def test_tuning_does_not_search_style():
    """A study's choices must stay those it was created with for it to be continued."""
    from imgxfer.components.adapters.regularizers import TUNABLE_REGULARIZERS

    assert TUNABLE_REGULARIZERS["augment"] == (
        "choice", "none", "light", "strong", "randaugment", "trivialaugment")


def test_augment_auto_chooses_style_only_for_a_grey_source_and_a_colour_target():
    from dataclasses import replace

    from imgxfer.core.config import RunConfig, resolve_augment, same_run

    chosen = resolve_augment(RunConfig(), 1, 3)
    assert chosen.augment == "style" and "grey" in chosen.augment_reason
    assert resolve_augment(RunConfig(), 1, 4).augment == "style"  # RGBA is colour too
    for grey_or_colour in ((1, 1), (3, 3), (3, 1)):  # grey to grey: light wins there
        kept = resolve_augment(RunConfig(), *grey_or_colour)
        assert kept.augment == "" and "own policy" in kept.augment_reason
    given = RunConfig(augment="light")
    assert resolve_augment(given, 1, 3) is given  # a policy the user chose stays
    # A folder that recorded what auto chose matches the default; one saved with ""
    # before auto existed, or with a policy the user chose, does not.
    assert same_run(chosen, replace(chosen, augment="auto", augment_reason=""))
    assert not same_run(chosen, replace(chosen, augment="light", augment_reason=""))
    assert not same_run(RunConfig(augment=""), RunConfig())
    assert not same_run(RunConfig(augment="style"), RunConfig())
    assert same_run(RunConfig(augment=""), kept)  # what a resumed run compares: resolved


def test_a_config_toml_older_than_augment_resumes_as_it_ran(tmp_path):
    from imgxfer.core.config import load_saved

    (tmp_path / "config.toml").write_text('source = "mnist"\ntarget = "mnist-m"\n')
    old = load_saved(tmp_path / "config.toml")
    assert old.augment == "" and old.synthesis == "text"


def test_a_run_records_what_augment_auto_chose(host, tmp_path):
    from imgxfer.core.config import from_mapping
    from imgxfer.tasks.classify.plan import prepare

    plan = prepare(from_mapping({"source": "tiny-source", "target": "tiny-target",
                                 "shots": 3, "out": str(tmp_path)}), host.registry)
    assert plan.config.augment == "" and plan.config.augment_reason  # both grey
    assert plan.encoder.augment == "light"
    assert 'augment = ""' in plan.config.to_toml()
    from conftest import tiny_bars

    from imgxfer.data.dataset import ImageDataset

    def colour_target(n_per_class: int = 30, seed: int = 0) -> ImageDataset:
        grey = tiny_bars("tiny-colour", n_per_class, seed=seed + 7, invert=True)
        tint = torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
        return ImageDataset(grey.images.data * tint, grey.labels, grey.class_names,
                            "tiny-colour")

    host.registry.add("datasets", "tiny-colour", colour_target, "test")
    plan = prepare(from_mapping({"source": "tiny-source", "target": "tiny-colour",
                                 "shots": 3, "out": str(tmp_path)}), host.registry)
    assert plan.config.augment == "style" and "grey" in plan.config.augment_reason
    assert plan.encoder.augment == "style"
    assert plan.adapters["finetune"].augmentation.policy == "style"
