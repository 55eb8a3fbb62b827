"""imgxfer.plugin.testing's contract checks over every registered component: the built-ins and
the first-party plugins of registry.toml that are installed beside imgxfer (as timm tests
every registered model); other installed plugins are left to their own tests.
A new component is checked without touching this file; a new *family* needs an argument
here (or a line saying which plugin's tests check it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgxfer.plugin import testing
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.install import known_plugins
from imgxfer.plugin.registry import TASKS

# The built-ins plus the installed first-party plugins (make test installs them all).
FIRST_PARTY = ",".join(name for name, p in known_plugins().items() if not p.builtin)
REGISTRY = PluginHost({"IMGXFER_LOAD_PLUGINS": FIRST_PARTY}).load_all().registry

# Small options, so each check takes a second or two on a CPU.
OPTIONS = {
    "encoders": {"smallcnn": {"width": 4, "input_size": 16}, "*": {"input_size": 32}},
    "generators": {"gan": {"width": 8, "image_size": 16, "batch_size": 8},
                   "diffusion": {"width": 8, "image_size": 8, "batch_size": 8,
                                 "sample_steps": 3}},
    "adapters": {"*": {"batch_size": 8}, "linear": {}, "lp-ft": {"batch_size": 8}},
    "datasets": {"syndigits": {"n_per_class": 3, "size": 16}, "mnist": {"n_per_class": 3},
                 "fashion-mnist": {"n_per_class": 3, "download": False}, "digits": {},
                 "digit-scenes:": {"n": 4, "size": 32}},
    "captioners": {},
}
# The rest of a family name, by family; families checked in their own plugin's tests.
FAMILY_ARGS = {"timm/": "test_resnet", "digit-scenes:": "syndigits"}
# Families that read files: checked over files written by the tests below.
FILE_FAMILIES = ("folder:", "csv:", "torchvision:", "masks:", "coco:")
CHECKED_BY_THEIR_PLUGIN = {"diffusers:": "plugins/imgxfer-diffusers/tests",
                           # the captioner, and the CLIP encoder and adapter (both clip:)
                           "hf:": "plugins/imgxfer-transformers/tests",
                           "clip:": "plugins/imgxfer-transformers/tests"}
CHECKS = {"encoders": testing.check_encoder, "captioners": testing.check_captioner,
          "generators": testing.check_generator, "adapters": testing.check_adapter,
          "datasets": testing.check_dataset}


def _options(kind: str, name: str, component) -> dict:
    table = OPTIONS[kind]
    options = dict(table.get(name, table.get("*", {})))
    return {k: v for k, v in options.items() if k in component.options()}


def _cases() -> list:
    cases = []
    for kind in CHECKS:
        for component in REGISTRY.all(kind):
            name, task = component.name, min(component.tasks, key=TASKS.index)
            if name in CHECKED_BY_THEIR_PLUGIN or name in FILE_FAMILIES:
                continue  # below, or with files of their own
            cases.append(pytest.param(kind, name, task, id=f"{kind}-{name}-{task}"))
    return cases


@pytest.mark.parametrize("kind, name, task", _cases())
def test_registered_component_keeps_its_protocol(kind, name, task) -> None:
    component = REGISTRY.get(kind, name, task)
    if kind == "adapters" and task != "classify":
        testing.check_dense_adapter(component.factory)
        return
    if component.is_family and name not in FAMILY_ARGS:
        pytest.fail(f"family {name!r} of plugin {component.plugin!r} has no argument in "
                    "FAMILY_ARGS (or a line in CHECKED_BY_THEIR_PLUGIN)")
    if name == "fashion-mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    args = (FAMILY_ARGS[name],) if component.is_family else ()
    CHECKS[kind](component.factory, *args, **_options(kind, name, component))


def _write_images(folder: Path) -> None:
    from PIL import Image

    for c, cls in enumerate(("a", "b")):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            pixels = torch.zeros(12, 12, dtype=torch.uint8)
            pixels[2 + i:6 + i, 3 * c:3 * c + 4] = 255
            Image.fromarray(pixels.numpy(), mode="L").save(folder / cls / f"{i}.png")


def test_file_datasets_keep_their_protocol(tmp_path) -> None:
    _write_images(tmp_path / "images")
    testing.check_dataset(REGISTRY.get("datasets", "folder:").factory,
                          str(tmp_path / "images"), size=16)
    rows = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}"
                             for p in sorted((tmp_path / "images").rglob("*.png"))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    testing.check_dataset(REGISTRY.get("datasets", "csv:").factory, str(tmp_path / "list.csv"),
                          size=16)


def test_scene_file_datasets_keep_their_protocol(tmp_path) -> None:
    """masks:PATH (a grey mask PNG per image) and coco:PATH (boxes and polygon masks)."""
    import json

    from PIL import Image

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    spec = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    for i in range(2):
        mask = torch.zeros(12, 12, dtype=torch.uint8)
        mask[2 + i:6 + i, 3:8] = 1
        Image.fromarray((mask * 200).numpy(), mode="L").save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask.numpy(), mode="L").save(tmp_path / "masks" / f"{i}.png")
        spec["images"].append({"id": i, "file_name": f"{i}.png"})
        spec["annotations"].append({"image_id": i, "category_id": 1, "bbox": [3, 2 + i, 5, 4],
                                    "segmentation": [[3, 2 + i, 8, 2 + i, 8, 6 + i, 3, 6 + i]]})
    testing.check_dataset(REGISTRY.get("datasets", "masks:", "segment").factory, str(tmp_path))
    (tmp_path / "ann.json").write_text(json.dumps(spec))
    testing.check_dataset(REGISTRY.get("datasets", "coco:", "detect").factory,
                          str(tmp_path / "ann.json"),
                          images=str(tmp_path / "images"))


def test_every_family_is_covered() -> None:
    """A family registered by an installed plugin is checked here or by its plugin."""
    families = {c.name for kind in CHECKS for c in REGISTRY.all(kind) if c.is_family}
    covered = set(FAMILY_ARGS) | set(CHECKED_BY_THEIR_PLUGIN) | set(FILE_FAMILIES)
    assert families <= covered, f"families without a contract check: {families - covered}"


def test_a_broken_component_fails_its_check_by_name() -> None:
    """The checks can fail: a generator whose samples leave [0, 1] is caught."""
    gan = REGISTRY.get("generators", "gan").factory

    def too_bright(**options):
        generator = gan(**options)
        sample = generator.sample
        generator.sample = lambda *a, **k: sample(*a, **k) * 2 + 0.1
        return generator

    with pytest.raises(AssertionError, match=r"outside \[0, 1\]"):
        testing.check_generator(too_bright, width=8, image_size=16, batch_size=8)


def test_check_encoder_accepts_an_int_input_size_and_names_the_forms_otherwise() -> None:
    from test_protocols import SquareEncoder

    from imgxfer.core.errors import UserError

    testing.check_encoder(SquareEncoder, input_size=16)
    with pytest.raises(UserError, match=r"input_size '16x16'; it must be a positive int \(a "
                                        r"square size such as 32\) or a pair \(height, width\)"):
        testing.check_encoder(SquareEncoder, input_size="16x16")


# Deliberately wrong tiny components: each check of the kit must catch its mistake and
# name the expected value.
class TinyEncoder(torch.nn.Module):
    """A correct tiny encoder (8 features, 1 channel, 16x16); subclasses break one thing."""

    feature_dim, in_channels, input_size, weights_source = 8, 1, 16, "random"
    pretrains = True
    pretrain_steps = None  # None: as many as the budget allows

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.make_net()

    def make_net(self) -> None:
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        from imgxfer.nn.preprocess import prepare

        return prepare(images, channels=1, size=(16, 16), mean=[0.5], std=[0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def pretrain(self, source, *, budget, progress, device) -> dict:
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        step = 0
        while (not budget.done(step) if self.pretrain_steps is None
               else step < self.pretrain_steps):
            loss = self(self.preprocess(source.images[:4])).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        return {}


def test_tiny_encoder_keeps_the_protocol() -> None:
    """The base of the broken encoders below passes, so each failure is its own mistake."""
    testing.check_encoder(TinyEncoder)


class WideForward(TinyEncoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x)] * 2, dim=1)


class KeepsChannels(TinyEncoder):
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(images, size=(16, 16))


class PretrainsTooLong(TinyEncoder):
    pretrain_steps = 5


class GlobalWeights(TinyEncoder):
    """Its weights come from torch's global generator: its seed changes nothing."""

    def __init__(self, seed: int = 0) -> None:
        torch.nn.Module.__init__(self)
        self.make_net()


@pytest.mark.parametrize("broken, message", [
    (WideForward, r"forward gave shape \(2, 16\), expected \(2, 8\): feature_dim is 8"),
    (KeepsChannels, r"preprocess gave shape \(2, 3, 16, 16\) for 2 3-channel 20x24 images, "
                    r"expected \(2, 1, 16, 16\): in_channels is 1 and input_size 16"),
    (PretrainsTooLong, r"pretrain ran 5 optimiser steps for budget.steps = 2, expected at "
                       r"most that: stop when budget.done\(step\) is true"),
    (GlobalWeights, r"two encoders built with the same seed have different weights "
                    r"\(net.0.weight\) once torch's global generator moved: draw them from a "
                    r"torch.Generator seeded with the `seed` option"),
], ids=["forward", "preprocess", "pretrain-budget", "global-generator"])
def test_a_broken_encoder_fails_its_check_naming_the_expected_value(broken, message) -> None:
    with pytest.raises(AssertionError, match=message):
        testing.check_encoder(broken)


class TinyAdapter:
    """A correct tiny adapter: a linear head on the target shots for budget.steps steps;
    the class attributes break it."""

    uses = frozenset({"target_labelled"})
    steps = None  # None: budget.steps
    extra_classes = 0
    leave_training = False

    def fit(self, encoder, data, *, budget, progress, device):
        from imgxfer.nn.classifier import Classifier

        model = Classifier(encoder, len(data.class_names) + self.extra_classes)
        opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
        shots = data.target_labelled
        for _ in range(budget.steps if self.steps is None else self.steps):
            loss = torch.nn.functional.cross_entropy(
                model(encoder.preprocess(shots.images[:])), shots.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model if self.leave_training else model.eval()


def test_tiny_adapter_keeps_the_protocol() -> None:
    testing.check_adapter(TinyAdapter)


def _broken(**attributes):
    return type("Broken", (TinyAdapter,), attributes)


@pytest.mark.parametrize("broken, message", [
    (_broken(uses=frozenset({"target", "source"})),
     r"uses \['source', 'target'\] names target, expected a non-empty subset of source, "
     r"target_labelled, target_unlabelled, synthetic"),
    (_broken(extra_classes=1), r"logits of shape \(24, 4\) for 24 images, expected \(24, 3\): "
                               r"the data has 3 classes"),
    (_broken(steps=10), r"fit ran 10 optimiser steps for budget.steps = 3, expected at most "
                        r"that"),
    (_broken(leave_training=True), r"fit returned the classifier in training mode \(the "
                                   r"classifier is training\), expected eval mode"),
], ids=["uses", "logits", "budget", "train-mode"])
def test_a_broken_adapter_fails_its_check_naming_the_expected_value(broken, message) -> None:
    with pytest.raises(AssertionError, match=message):
        testing.check_adapter(broken)


class TinyGenerator:
    """Class means plus a learned-looking offset drawn from its seed, plus seeded noise."""

    conditioning = frozenset({"label"})

    def __init__(self, seed: int = 0) -> None:
        self.offset = self.draw_offset(seed)
        self.means = torch.zeros(0)

    def draw_offset(self, seed: int) -> torch.Tensor:
        return 0.1 * torch.rand(1, generator=torch.Generator().manual_seed(seed))

    def fit(self, data, *, budget, progress, device):
        from imgxfer.plugin.protocols import FitResult

        self.means = torch.stack([data.images[data.labels == c].mean(0)
                                  for c in range(len(data.class_names))])
        return FitResult(1)

    def sample(self, prompts, labels, *, seed, device):
        g = torch.Generator().manual_seed(seed)
        base = self.means[torch.as_tensor(labels)] + self.offset
        return (base + 0.1 * torch.randn(base.shape, generator=g)).clamp(0, 1)

    def state_dict(self):
        return {"means": self.means, "offset": self.offset}

    def load_state_dict(self, state):
        self.means, self.offset = state["means"], state["offset"]


class GlobalOffsetGenerator(TinyGenerator):
    def draw_offset(self, seed: int) -> torch.Tensor:
        return 0.1 * torch.rand(1)  # the global generator: the seed changes nothing


def test_a_generator_drawing_from_the_global_generator_fails_its_check() -> None:
    testing.check_generator(TinyGenerator)
    with pytest.raises(AssertionError, match=r"two generators built with the same seed and "
                                             r"fitted alike draw other images once torch's "
                                             r"global generator moved: draw them from a "
                                             r"torch.Generator seeded with the `seed` option"):
        testing.check_generator(GlobalOffsetGenerator)
