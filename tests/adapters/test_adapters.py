"""Tests of the built-in transfer adapters on tiny shapes (16x16 bars and dots) with a
tiny SmallCNN: each adapter learns the shifted target, copes with missing sets, refuses
bad options; plus the shared pieces (strong augmentation, gradient reversal, losses)."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from imgxfer.components.adapters.adversarial import CDAN, DANN
from imgxfer.components.adapters.baselines import SourceOnly, TargetOnly
from imgxfer.components.adapters.common import grad_reverse
from imgxfer.components.adapters.discrepancy import MMD, DeepCORAL, coral_loss, mk_mmd
from imgxfer.components.adapters.linear import LinearProbe, LinearProbeFineTune
from imgxfer.components.adapters.selftraining import SelfTraining
from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import ImageDataset, TransferData, few_shot_split
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.registry import Registry

CLASSES = ["horizontal", "vertical", "dot"]
CPU = torch.device("cpu")

# name -> (class, options that keep the test fast: small batches, and a higher lr so that
# a fresh head on the tiny encoder's 16 features converges within a few dozen steps)
FAST = {"batch_size": 32, "lr": 3e-3}
ADAPTERS = {
    "source-only": (SourceOnly, FAST),
    "target-only": (TargetOnly, FAST),
    "linear": (LinearProbe, {}),
    "lp-ft": (LinearProbeFineTune, FAST),
    "dann": (DANN, FAST),
    "cdan": (CDAN, FAST),
    "coral": (DeepCORAL, FAST),
    "mmd": (MMD, FAST),
    "self-training": (SelfTraining, FAST),
}
ALLOWED_USES = {"source", "target_labelled", "target_unlabelled", "synthetic"}


def shapes(domain: str, n_per_class: int, *, seed: int, shifted: bool = False) -> ImageDataset:
    """Horizontal bar / vertical bar / dot at random positions on 16x16. The source is
    white on black with little noise; the shifted target has a grey background, lower
    contrast and more noise (BatchNorm statistics of the source no longer fit it)."""
    g = torch.Generator().manual_seed(seed)
    size = 16
    images = torch.zeros(3 * n_per_class, 1, size, size)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    for i, y in enumerate(labels.tolist()):
        a, b = (int(v) for v in torch.randint(2, size - 5, (2,), generator=g))
        if y == 0:
            images[i, 0, a:a + 2, 2:-2] = 1
        elif y == 1:
            images[i, 0, 2:-2, a:a + 2] = 1
        else:
            images[i, 0, a:a + 3, b:b + 3] = 1
    if shifted:
        images = 0.15 + 0.7 * images + 0.2 * torch.rand(images.shape, generator=g)
    else:
        images = images + 0.1 * torch.rand(images.shape, generator=g)
    return ImageDataset(images.clamp(0, 1), labels, list(CLASSES), domain)


@pytest.fixture(scope="module")
def world():
    """Source, a shifted target split with 0 and with 3 shots, and one pretrained encoder."""
    torch.manual_seed(0)
    source = shapes("source", 24, seed=0)
    target = shapes("target", 30, seed=1, shifted=True)
    encoder = SmallCNN(width=4, input_size=16, batch_size=32, seed=0)
    encoder.pretrain(source, budget=Budget(60), device=CPU)
    return {
        "source": source, "encoder": encoder,
        0: few_shot_split(target, 0, seed=0), 3: few_shot_split(target, 3, seed=0),
    }


def transfer_data(world, shots: int, synthetic: ImageDataset | None = None) -> TransferData:
    split = world[shots]
    return TransferData(world["source"], split.labelled, split.unlabelled, synthetic)


def fit(world, name: str, data: TransferData, steps: int, **options) -> torch.nn.Module:
    cls, fast = ADAPTERS[name]
    torch.manual_seed(0)
    return cls(**{**fast, **options}).fit(copy.deepcopy(world["encoder"]), data,
                                          budget=Budget(steps), progress=NullProgress(),
                                          device=CPU)


def accuracy(world, model: torch.nn.Module, shots: int) -> float:
    test = world[shots].test
    logits = predict_logits(model, world["encoder"].preprocess(test.images[:]), CPU)
    assert logits.shape == (len(test), 3)
    assert torch.isfinite(logits).all()
    return (logits.argmax(1) == test.labels).float().mean().item()


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_learns_the_target(world, name):
    """Every adapter beats chance (1/3) clearly on the shifted target; all but
    target-only with 0 shots and no synthetic images. Source-only keeps the source's
    BatchNorm statistics, so it is the weakest here (0.67 when written); every method
    with AdaBN reached 1.0."""
    shots = 3 if name == "target-only" else 0
    model = fit(world, name, transfer_data(world, shots), steps=60)
    assert not model.training
    assert accuracy(world, model, shots) > (0.55 if name == "source-only" else 0.8), name


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_with_shots_and_synthetic(world, name):
    """All four sets present (synthetic images from a third seed of the target style)."""
    synthetic = shapes("synthetic", 4, seed=5, shifted=True)
    model = fit(world, name, transfer_data(world, 3, synthetic), steps=5)
    logits = predict_logits(model, world["encoder"].preprocess(world[3].test.images[:]), CPU)
    assert logits.shape == (len(world[3].test), 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["finetune-style", "self-training"])
def test_style_augmentation_feeds_rgb_batches_to_a_grey_encoder(world, name):
    """--augment style makes grey batches RGB; a one-channel encoder's preprocessing takes
    them back to grey, for labelled and (self-training) unlabelled batches alike."""
    if name == "finetune-style":
        from imgxfer.components.adapters.finetune import FineTune

        model = FineTune(**FAST, augment="style").fit(
            copy.deepcopy(world["encoder"]), transfer_data(world, 3), budget=Budget(5),
            progress=NullProgress(), device=CPU)
    else:
        model = fit(world, name, transfer_data(world, 3), steps=5, augment="style")
    logits = predict_logits(model, world["encoder"].preprocess(world[3].test.images[:]), CPU)
    assert logits.shape == (len(world[3].test), 3) and torch.isfinite(logits).all()


def test_target_only_needs_shots(world):
    with pytest.raises(UserError, match="shots"):
        fit(world, "target-only", transfer_data(world, 0), steps=5)


def test_source_only_reads_no_target_and_target_only_no_source(world):
    """Poisoned (NaN) images in the sets an adapter must not read leave it unharmed."""
    split = world[3]
    nan_unlabelled = ImageDataset(torch.full_like(split.unlabelled.images[:], float("nan")),
                                  split.unlabelled.labels, list(CLASSES), "poison")
    nan_labelled = ImageDataset(torch.full_like(split.labelled.images[:], float("nan")),
                                split.labelled.labels, list(CLASSES), "poison")
    nan_source = ImageDataset(torch.full_like(world["source"].images[:], float("nan")),
                              world["source"].labels, list(CLASSES), "poison")
    model = fit(world, "source-only",
                TransferData(world["source"], nan_labelled, nan_unlabelled, nan_labelled), 3)
    assert torch.isfinite(predict_logits(model, world["encoder"].preprocess(split.test.images[:]), CPU)).all()
    model = fit(world, "target-only",
                TransferData(nan_source, split.labelled, nan_unlabelled, nan_labelled), 3)
    assert torch.isfinite(predict_logits(model, world["encoder"].preprocess(split.test.images[:]), CPU)).all()
    assert SourceOnly.uses == {"source"} and TargetOnly.uses == {"target_labelled"}


def test_adaptation_sees_unlabelled_target(world):
    """The domain-adaptation adapters read unlabelled target images (NaN ones spoil them)."""
    split = world[0]
    poisoned = ImageDataset(torch.full_like(split.unlabelled.images[:], float("nan")),
                            split.unlabelled.labels, list(CLASSES), "poison")
    for name in ("dann", "cdan", "coral", "mmd", "self-training"):
        model = fit(world, name, TransferData(world["source"], split.labelled, poisoned), 2,
                    adabn=False)
        logits = predict_logits(model, world["encoder"].preprocess(split.test.images[:]), CPU)
        assert not torch.isfinite(logits).all(), name


def test_linear_probe_keeps_the_encoder_frozen(world):
    encoder = copy.deepcopy(world["encoder"])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    LinearProbe(adabn=False).fit(encoder, transfer_data(world, 3), budget=Budget(1))
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # With AdaBN only BatchNorm statistics change, never a weight.
    LinearProbe().fit(encoder, transfer_data(world, 3), budget=Budget(1))
    after = encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)


def test_probes_share_cached_features(world, tmp_path, monkeypatch):
    """The second probe of the same frozen encoder on the same images (linear, lp-ft's
    and self-training's initial probes) encodes nothing,
    and gives the same head; feature_cache=false neither reads nor writes."""
    from imgxfer.data import features

    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path))
    data = transfer_data(world, 3)
    first = fit(world, "linear", data, 1)
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 2  # source and target shots

    def no_encoding(*args):
        raise AssertionError("cached features must not be encoded again")

    monkeypatch.setattr(features, "_encode", no_encoding)
    again = fit(world, "linear", data, 1)
    assert torch.equal(again.head.weight, first.head.weight)
    lpft = fit(world, "lp-ft", data, 1, lr=1e-12)  # its probe reads the same entries
    torch.testing.assert_close(lpft.head.weight, first.head.weight)
    selftrain = fit(world, "self-training", data, 1, lr=1e-12)  # so does its probe_init
    torch.testing.assert_close(selftrain.head.weight, first.head.weight)
    with pytest.raises(AssertionError, match="must not be encoded"):
        fit(world, "linear", data, 1, feature_cache=False)


def test_linear_probe_only_synthetic(world):
    """Source and shots weighted 0: the probe learns from the synthetic images alone."""
    synthetic = shapes("synthetic", 20, seed=9, shifted=True)
    model = fit(world, "linear", transfer_data(world, 3, synthetic), 1,
                source_weight=0.0, target_weight=0.0)
    assert accuracy(world, model, 3) > 0.75
    with pytest.raises(UserError, match="no labelled images"):
        fit(world, "linear", transfer_data(world, 0), 1, source_weight=0.0)


def test_same_seed_same_result(world):
    data = transfer_data(world, 3)
    x = world["encoder"].preprocess(world[3].test.images[:])
    a = predict_logits(fit(world, "dann", data, 4), x, CPU)
    b = predict_logits(fit(world, "dann", data, 4), x, CPU)
    assert torch.equal(a, b)


class _Recorder:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None]] = []
        self.advanced = 0
        self.infos: list[dict] = []

    @contextmanager
    def task(self, description, total):
        self.tasks.append((description, total))
        outer = self

        class _T:
            def advance(self, n=1, **info):
                outer.advanced += n
                outer.infos.append(info)

        yield _T()

    def log(self, message):
        pass


@pytest.mark.parametrize("name", ["coral", "linear"])
def test_progress_task(world, name):
    recorder = _Recorder()
    cls, fast = ADAPTERS[name]
    cls(**fast).fit(copy.deepcopy(world["encoder"]), transfer_data(world, 3),
                    budget=Budget(3), progress=recorder, device=CPU)
    assert recorder.tasks == [(f"adapter: {name}", 3)] and recorder.advanced == 3


@pytest.mark.parametrize("name,key", [("dann", "d_acc"), ("cdan", "d_acc"), ("coral", "coral"),
                                      ("mmd", "mmd"), ("self-training", "mask")])
def test_unlabelled_target_loss_is_active(world, name, key):
    """Each method's own term runs on unlabelled target batches and reports its number;
    self-training finds confident pseudo-labels, the discrepancies shrink."""
    recorder = _Recorder()
    cls, fast = ADAPTERS[name]
    torch.manual_seed(0)
    cls(**fast).fit(copy.deepcopy(world["encoder"]), transfer_data(world, 0),
                    budget=Budget(50), progress=recorder, device=CPU)
    values = [info[key] for info in recorder.infos]
    assert len(values) == 50 and all(0 <= v < float("inf") for v in values)
    if name == "self-training":
        assert max(values[-10:]) > 0.3  # share of target images with a pseudo-label
    if name in ("coral", "mmd"):
        assert sum(values[-10:]) < 0.8 * sum(values[:10])


def test_probe_init_gives_pseudo_labels_from_the_start(world):
    """Self-training's head starts from a linear probe: confident pseudo-labels at once;
    a fresh random head has none in the first steps."""
    masks = {}
    for probe_init in (True, False):
        recorder = _Recorder()
        torch.manual_seed(0)
        SelfTraining(**FAST, probe_init=probe_init).fit(
            copy.deepcopy(world["encoder"]), transfer_data(world, 0), budget=Budget(3),
            progress=recorder, device=CPU)
        masks[probe_init] = recorder.infos[0]["mask"]
    assert masks[True] > 0.3 and masks[False] == 0.0


BAD_OPTIONS = [
    ("source-only", {"lr": 0.0}),
    ("target-only", {"lr": -1e-3}),
    ("target-only", {"batch_size": 0}),
    ("linear", {"c": 0.0}),
    ("linear", {"source_weight": -1.0}),
    ("lp-ft", {"lr": 0.0}),
    ("lp-ft", {"synthetic_weight": -0.5}),
    ("dann", {"adv_weight": -1.0}),
    ("dann", {"lr": -0.1}),
    ("cdan", {"target_weight": -1.0}),
    ("cdan", {"lr": float("nan")}),
    ("coral", {"coral_weight": -1.0}),
    ("mmd", {"mmd_weight": -0.1}),
    ("mmd", {"kernels": 0}),
    ("self-training", {"threshold": 1.5}),
    ("self-training", {"unlabelled_weight": -1.0}),
    ("self-training", {"lr": 0}),
]


@pytest.mark.parametrize("name,options", BAD_OPTIONS)
def test_bad_options(name, options):
    registry = Registry()
    registry.add("adapters", name, ADAPTERS[name][0], "builtin")
    with pytest.raises(UserError, match=next(iter(options))):
        registry.build("adapters", name, options)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_declared_uses_and_description(name):
    cls = ADAPTERS[name][0]
    assert cls.uses and set(cls.uses) <= ALLOWED_USES
    registry = Registry()
    registry.add("adapters", name, cls, "builtin")
    assert registry.get("adapters", name).description  # the docstring's first line
    assert "seed" in registry.get("adapters", name).options() or name == "linear"


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_discrepancy_losses():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    shifted = 3 * torch.randn(64, 8, generator=g) + 2
    assert coral_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert coral_loss(a, shifted) > 10 * coral_loss(a, b)
    assert mk_mmd(a, a).abs().item() < 1e-6
    assert mk_mmd(a, shifted) > 5 * mk_mmd(a, b)
