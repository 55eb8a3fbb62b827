"""The ``hf:PATH`` captioner of imgxfer-transformers with tiny random-weight BLIP and GIT
models built here from configs (hf_tiny_models.py; the hub is never contacted), and how
the plugin is found and refuses folders that are not such models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hf_tiny_models import save_tiny_blip, save_tiny_clip, save_tiny_git

from imgxfer.core.errors import UserError
from imgxfer.plugin import testing
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.registry import Registry
from imgxfer_transformers.captioner import HFCaptioner

CLASSES = ["bar", "column", "dot"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {"blip": save_tiny_blip(root / "blip"), "git": save_tiny_git(root / "git"),
            "clip": save_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return PluginHost(env={"IMGXFER_LOAD_PLUGINS": "transformers"}).load_all().registry


def images(n: int = 4, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, 20, 20, generator=torch.Generator().manual_seed(seed))


def test_found_through_installed_entry_point() -> None:
    testing.check_installed_plugin(
        "transformers", "imgxfer_transformers",
        {"adapters": ["clip:"], "captioners": ["hf:"], "encoders": ["clip:"]},
        "pip install './plugins/imgxfer-transformers'")


def test_importing_the_plugin_does_not_import_transformers() -> None:
    code = ("import sys\n"
            "from imgxfer.plugin.host import PluginHost\n"
            "host = PluginHost(env={'IMGXFER_LOAD_PLUGINS': 'transformers'}).load_all()\n"
            "assert host.plugins['transformers'].status == 'ok'\n"
            "print('transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_captioner_contract(models: dict[str, Path], kind: str) -> None:
    captioner = testing.check_captioner(HFCaptioner, str(models[kind]), max_new_tokens=6)
    assert captioner.path == models[kind].resolve()
    assert captioner.attributes is None  # nothing measured unless combine=true
    testing.check_captioner(HFCaptioner, str(models[kind]), max_new_tokens=6, combine=True)


def test_captions_are_the_models_text(models: dict[str, Path], registry: Registry) -> None:
    """Without combine, a caption is what the model generates (greedy, special tokens
    dropped); batching does not change any caption."""
    from transformers import AutoProcessor, BlipForConditionalGeneration

    captioner = registry.build("captioners", f"hf:{models['blip']}", {"max_new_tokens": 6})
    x = images(3, channels=3)
    texts = captioner.caption(x, torch.tensor([0, 1, 2]), class_names=CLASSES, domain="d")
    processor = AutoProcessor.from_pretrained(models["blip"], local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(models["blip"], local_files_only=True)
    pixels = [(i * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for i in x]
    ids = model.generate(**processor(images=pixels, return_tensors="pt"), max_new_tokens=6,
                         do_sample=False)
    expected = [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
    assert texts == [e or t for e, t in zip(expected, texts, strict=True)] and any(expected)
    one_by_one = registry.build("captioners", f"hf:{models['blip']}",
                                {"max_new_tokens": 6, "batch_size": 1})
    assert one_by_one.caption(x, None, class_names=CLASSES, domain="d") == texts


def test_prompts_and_combined_captions_come_with_the_template(models: dict[str, Path],
                                                               registry: Registry) -> None:
    from imgxfer.components.captioners.template import TemplateCaptioner

    template = TemplateCaptioner()
    kw = {"class_names": CLASSES, "domain": "target", "description": "tiny shape"}
    labels = torch.tensor([2, 0])
    captioner = registry.build("captioners", f"hf:{models['git']}",
                               {"max_new_tokens": 5, "combine": True})
    # Prompts for the generator: no image to look at, the template captioner writes them.
    assert captioner.caption(None, labels, **kw) == template.caption(None, labels, **kw)
    x = images(2)
    combined = captioner.caption(x, labels, **kw)
    model_text = captioner.model_text(x)
    for text, plain, own in zip(combined, template.caption(x, labels, **kw), model_text, strict=True):
        assert text == (f"{plain}; {own}" if own else plain)
        assert text.startswith("a tiny shape ") and "ink on" in text
    assert captioner.attributes(x)[0]["text"] in combined[0]  # measured, as in captions.jsonl


def test_to_moves_the_model_to_the_run_device(models: dict[str, Path]) -> None:
    captioner = HFCaptioner(str(models["git"]), max_new_tokens=3)
    assert captioner.to("cpu") is captioner and captioner.device == torch.device("cpu")
    assert next(captioner.model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        captioner.to("cuda")
        assert next(captioner.model.parameters()).device.type == "cuda"
        assert captioner.caption(images(2), None, class_names=CLASSES, domain="d")


def _broken(models: dict[str, Path], tmp_path: Path, breakage: str) -> Path:
    folder = tmp_path / breakage
    if breakage == "missing":
        return folder
    if breakage == "a-file":
        folder.write_text("not a folder")
        return folder
    folder.mkdir()
    if breakage == "no-config":
        (folder / "model.safetensors").write_bytes(b"")
    elif breakage == "bad-weights":
        for part in models["blip"].iterdir():
            (folder / part.name).write_bytes(part.read_bytes())
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    elif breakage == "no-processor":
        (folder / "config.json").write_text((models["blip"] / "config.json").read_text())
    return folder


@pytest.mark.parametrize("breakage, message", [
    ("missing", "does not exist; give the folder of an image-to-text model"),
    ("a-file", "is a file; give the folder of an image-to-text model"),
    ("no-config", "is not a Hugging Face model folder (it has no config.json)"),
    ("no-processor", "the processor in"),
    ("bad-weights", "the blip model in"),
])
def test_folders_that_are_not_captioning_models_are_one_sentence(
        models: dict[str, Path], tmp_path: Path, breakage: str, message: str) -> None:
    folder = _broken(models, tmp_path, breakage)
    with pytest.raises(UserError, match=r"^hf:") as error:
        HFCaptioner(str(folder))
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1
    assert str(error.value).endswith(".")


def test_a_clip_folder_is_not_a_captioner(models: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="holds a 'clip' model, which is not an image-to-text"):
        HFCaptioner(str(models["clip"]))


@pytest.mark.parametrize("option", ["max_new_tokens", "num_beams", "batch_size"])
def test_invalid_options_are_refused(models: dict[str, Path], option: str) -> None:
    with pytest.raises(UserError, match=f"{option} must be a positive integer"):
        HFCaptioner(str(models["git"]), **{option: 0})


def test_imgxfer_caption_with_a_missing_folder(registry: Registry, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On the command line: one sentence, exit 2, no traceback."""
    from imgxfer.cli.app import cli
    from imgxfer.plugin import host as plugins

    monkeypatch.setattr(plugins, "_HOST",
                        PluginHost({"IMGXFER_LOAD_PLUGINS": "transformers"}).load_all())
    result = CliRunner().invoke(cli, ["caption", "digits", "--limit", "2", "--captioner",
                                      f"hf:{tmp_path / 'nowhere'}", "--out",
                                      str(tmp_path / "c.jsonl")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "does not exist" in result.output
