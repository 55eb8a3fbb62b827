"""Model folders that could run code when loaded are refused before anything is read:
custom code (``auto_map`` and the Python file it names) is never run, even when the
user would answer "y" to transformers' question, and pickled weights are never
unpickled. Each refusal is one sentence naming the file (issue 29, items 11 and 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hf_tiny_models import save_tiny_blip, save_tiny_clip

from imgxfer.core.errors import UserError
from imgxfer.plugin.host import PluginHost
from imgxfer_transformers.adapter import ClipAdapter
from imgxfer_transformers.captioner import HFCaptioner
from imgxfer_transformers.clip import make_clip_encoder

# What the folder's code does when imported: leave a marker file behind.
MARKER_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("the folder's code ran")
from transformers import BlipProcessor as CustomProcessor
"""


def with_custom_processor(model: Path, folder: Path, marker: Path) -> Path:
    """A copy of ``model`` whose processor exists only as the folder's own code."""
    shutil.copytree(model, folder)
    (folder / "custom_processor.py").write_text(MARKER_CODE.format(marker=str(marker)))
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        config = json.loads(path.read_text())
        config["processor_class"] = "CustomProcessor"  # a class transformers does not have
        config["auto_map"] = {"AutoProcessor": "custom_processor.CustomProcessor"}
        path.write_text(json.dumps(config))
    return folder


def with_pickled_weights(model: Path, folder: Path) -> Path:
    """A copy of ``model`` whose weights are a pickle (pytorch_model.bin) only."""
    shutil.copytree(model, folder)
    weights = folder / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()
    return folder


@pytest.fixture(scope="module")
def blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("untrusted") / "blip")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("untrusted") / "clip")


def test_a_folder_with_its_own_code_is_refused_and_its_code_never_runs(
        blip: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    folder = with_custom_processor(blip, tmp_path / "custom", marker)
    with pytest.raises(UserError) as error:
        HFCaptioner(str(folder))
    message = str(error.value)
    assert message.startswith("hf:") and "holds custom code" in message
    assert "never runs a model folder's own code" in message and len(message.splitlines()) == 1
    assert not marker.exists()


def test_auto_map_alone_is_refused(blip: Path, tmp_path: Path) -> None:
    """A config that points to code elsewhere (no .py in the folder) is refused too."""
    folder = with_custom_processor(blip, tmp_path / "custom", tmp_path / "ran.txt")
    (folder / "custom_processor.py").unlink()
    with pytest.raises(UserError, match=r"holds custom code \(processor_config.json\)"):
        HFCaptioner(str(folder))


def test_the_caption_command_never_asks_and_never_runs_the_code(
        blip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with "y" waiting on standard input: one sentence, exit 2, no marker."""
    from imgxfer.cli.app import cli
    from imgxfer.plugin import host as plugins

    marker = tmp_path / "ran.txt"
    folder = with_custom_processor(blip, tmp_path / "custom", marker)
    monkeypatch.setattr(plugins, "_HOST",
                        PluginHost({"IMGXFER_LOAD_PLUGINS": "transformers"}).load_all())
    result = CliRunner().invoke(cli, ["caption", "digits", "--limit", "2", "--captioner",
                                      f"hf:{folder}", "--out", str(tmp_path / "c.jsonl")],
                                input="y\ny\n")
    assert result.exit_code == 2, result.output
    assert "holds custom code" in result.output and "Traceback" not in result.output
    assert "[y/N]" not in result.output and not marker.exists()
    assert not (tmp_path / "c.jsonl").exists()


def test_the_loader_itself_never_trusts_remote_code(blip: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The second lock: were the folder check bypassed, transformers is still told
    ``trust_remote_code=False``: it refuses the processor instead of asking."""
    from imgxfer_transformers import captioner, folders

    marker = tmp_path / "ran.txt"
    folder = with_custom_processor(blip, tmp_path / "custom", marker)
    monkeypatch.setattr(folders, "check_model_folder", lambda *_: None)
    with pytest.raises(UserError, match="the processor in .* cannot be loaded"):
        captioner.load_captioning_model(str(folder), "hf:x")
    assert not marker.exists()


def test_pickled_weights_are_refused_for_every_folder_component(
        blip: Path, clip: Path, tmp_path: Path) -> None:
    cases = [(HFCaptioner, with_pickled_weights(blip, tmp_path / "blip")),
             (make_clip_encoder, with_pickled_weights(clip, tmp_path / "clip")),
             (ClipAdapter, tmp_path / "clip")]
    for factory, folder in cases:
        with pytest.raises(UserError) as error:
            factory(str(folder))
        message = str(error.value)
        assert "pytorch_model.bin in" in message and "loads only safetensors" in message
        assert len(message.splitlines()) == 1 and "weights_only" not in message


def test_pickles_beside_safetensors_are_never_read(blip: Path, tmp_path: Path) -> None:
    """A folder with both loads the safetensors file (``use_safetensors=True``); the
    pickle beside it, here one that cannot even be read, is left alone."""
    folder = tmp_path / "both"
    shutil.copytree(blip, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    captioner = HFCaptioner(str(folder))
    images = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    assert len(captioner.caption(images, None, class_names=["a", "b"], domain="d")) == 2
