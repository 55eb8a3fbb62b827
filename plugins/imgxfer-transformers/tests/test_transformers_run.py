"""imgxfer-transformers through the whole chain, as a user runs it: `imgxfer run` with the
BLIP captioner, the CLIP encoder, the CLIP adapters and the CLIP-score filter on tiny
random-weight models (no download), then `imgxfer predict` on the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hf_tiny_models import save_tiny_blip, save_tiny_clip

from imgxfer.cli.app import cli
from imgxfer.plugin import host as plugins
from imgxfer.plugin.host import PluginHost


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run-models")
    return {"blip": save_tiny_blip(root / "blip"), "clip": save_tiny_clip(root / "clip")}


@pytest.fixture()
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(plugins, "_HOST",
                        PluginHost({"IMGXFER_LOAD_PLUGINS": "transformers"}).load_all())


def tiny_run(out: Path, *extra: str) -> list[str]:
    return ["run", "--source", "syndigits", "--source-opt", "n_per_class=4", "--target",
            "digits", "--shots", "2", "--generator-opt", "width=8", "--generator-opt",
            "image_size=16", "--generator-steps", "3", "--synthetic-per-class", "2",
            "--adapter-steps", "3", "--no-quality", "--device", "cpu", "--out", str(out),
            *extra]


def test_run_with_blip_captions_clip_adapters_and_the_clip_filter(
        models: dict[str, Path], host: None, tmp_path: Path) -> None:
    blip, clip = models["blip"], models["clip"]
    result = CliRunner().invoke(cli, tiny_run(
        tmp_path / "runs", "--captioner", f"hf:{blip}", "--captioner-opt", "max_new_tokens=4",
        "--captioner-opt", "combine=true", "--encoder", f"clip:{clip}",
        "--compare", f"clip:{clip},linear", "--synthetic-filter", "0.01",
        "--synthetic-filter-by", f"clip:{clip}"))
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["adapters"]) == {f"clip:{clip}", "linear"}
    assert 0 <= metrics["target"]["accuracy"] <= 1
    filtered = metrics["generator"]["filter"]
    assert filtered["by"] == f"clip:{clip}" and filtered["generated"] == 20
    rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    # Combined captions: the template's (class, measured attributes, domain); the model's text.
    shots = [r for r in rows if r["set"] == "target"]
    assert shots and all(r["caption"].startswith("a handwritten digit ") for r in shots)

    # predict rebuilds the CLIP encoder from config.toml and the Tip-Adapter cache from
    # the classifier file (the fingerprint proves it computes what the run's did).
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(cli, ["predict", "digits", "--from", str(folder), "--adapter",
                                      f"clip:{clip}", "--limit", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 6


def test_clip_adapter_with_another_encoder_is_one_sentence(models: dict[str, Path], host: None,
                                                           tmp_path: Path) -> None:
    clip = models["clip"]
    result = CliRunner().invoke(cli, tiny_run(
        tmp_path / "runs", "--generator", "none", "--encoder-opt", "width=4",
        "--encoder-opt", "input_size=16", "--encoder-steps", "2", "--adapter", f"clip:{clip}"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"the run's encoder must be clip:{clip}" in result.output
    runs = tmp_path / "runs"  # found when the run was prepared: no folder, nothing trained
    assert not runs.exists() or not any(runs.iterdir())
