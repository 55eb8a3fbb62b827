"""imgxfer.testing's contract checks over every registered component: the built-ins and
the first-party plugins of registry.toml that are installed beside imgxfer (as timm tests
every registered model); other installed plugins are left to their own tests.
A new component is checked without touching this file; a new *family* needs an argument
here (or a line saying which plugin's tests check it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgxfer import testing
from imgxfer.install import known_plugins
from imgxfer.plugins import PluginHost
from imgxfer.registry import TASKS

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

    from imgxfer.errors import UserError

    testing.check_encoder(SquareEncoder, input_size=16)
    with pytest.raises(UserError, match=r"input_size '16x16'; it must be a positive int \(a "
                                        r"square size such as 32\) or a pair \(height, width\)"):
        testing.check_encoder(SquareEncoder, input_size="16x16")
