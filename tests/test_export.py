"""`imgxfer export`: a run's model as ONNX or TorchScript, read back with onnxruntime and
torch.jit and compared with the run's own model; its model card; every bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from bad_input import assert_one_sentence
from click.testing import CliRunner
from conftest import FakePlugin, tiny_bars, tiny_compare_run

from imgxfer.cli.app import cli
from imgxfer.cli.predict import load_classifier
from imgxfer.run import export as exporting


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A tiny classification run that saved two classifiers (finetune, linear)."""
    folder, _ = tiny_compare_run(tmp_path_factory, "finetune,linear")
    return folder


@pytest.fixture(scope="module", params=["segment", "detect"])
def dense_run(request, tmp_path_factory):
    """A tiny dense run of one adapter, trained a few steps: the export must match
    whatever the run's model computes, good or not."""
    from imgxfer.plugin import host as plugins

    out = tmp_path_factory.mktemp(f"{request.param}-runs")
    host = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(FakePlugin(), "fake")
    plugins._HOST = host
    try:
        result = invoke("run", "--task", request.param, "--source", "tiny-scenes",
                        "--target", "tiny-scenes-inverted", "--encoder-opt", "width=4",
                        "--encoder-steps", "5", "--adapter-steps", "3", "--shots", "2",
                        "--adapter", "finetune", "--out", str(out))
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return request.param, folder


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user-guide" / "export.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run_example(code: str, folder: Path, monkeypatch) -> None:
    """Run a documented example as written, in ``folder`` (where its file is)."""
    monkeypatch.chdir(folder)
    exec(compile(code, "example", "exec"), {})


def target_images() -> torch.Tensor:
    """The run's target images (the fixture's tiny-target), as a user would feed them."""
    return tiny_bars("tiny-target", 30, seed=7, invert=True).images[:]


@pytest.mark.parametrize("fmt, dtype", [("onnx", "float32"), ("torchscript", "uint8")])
def test_a_classifier_exports_and_computes_what_the_run_does(host, compare_run, tmp_path,
                                                             fmt, dtype):
    out = tmp_path / f"model{exporting.FORMATS[fmt]}"
    result = invoke("export", "--from", str(compare_run), "--adapter", "finetune", "--format",
                    fmt, "--input-dtype", dtype, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "model.md"])
    assert f"wrote {out}" in result.output and "on 7 check images" in result.output

    # The run's own classifier, as `imgxfer predict` loads it, on the run's target images.
    loaded = load_classifier(compare_run, "finetune", host.registry)
    images = target_images()
    with torch.no_grad():
        expected = loaded.model(loaded.model.encoder.preprocess(images)).numpy()
    given = (images * 255).round().to(torch.uint8) if dtype == "uint8" else images
    if dtype == "uint8":  # the run's model on exactly those pixel values
        with torch.no_grad():
            expected = loaded.model(loaded.model.encoder.preprocess(given / 255.0)).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        assert session.get_inputs()[0].type == "tensor(float)"
        got = session.run(None, {"images": given.numpy()})[0]
        one = session.run(None, {"images": given[:1].numpy()})[0]  # any batch size
        meta = session.get_modelmeta().custom_metadata_map
        classes = json.loads(meta["imgxfer.classes"])
    else:
        extra = {exporting.METADATA: ""}
        module = torch.jit.load(str(out), _extra_files=extra)
        with torch.no_grad():
            got, one = module(given).numpy(), module(given[:1]).numpy()
        classes = json.loads(extra[exporting.METADATA])["imgxfer.classes"]
    assert got.shape == (90, 3) and np.abs(got - expected).max() <= 1e-4
    assert np.abs(one - expected[:1]).max() <= 1e-4
    assert classes == loaded.class_names
    # Not a constant function: the classes it picks are the run's, and mostly right.
    labels = tiny_bars("tiny-target", 30, seed=7, invert=True).labels.numpy()
    assert (got.argmax(1) == expected.argmax(1)).all() and (got.argmax(1) == labels).mean() > 0.6


def test_the_model_card_tells_data_metrics_io_use_and_limits(host, compare_run, tmp_path,
                                                             monkeypatch, capsys):
    out = tmp_path / "linear.onnx"
    result = invoke("export", "--from", str(compare_run), "--adapter", "linear", "--format",
                    "onnx", "-o", str(out))
    assert result.exit_code == 0, result.output
    card = (tmp_path / "linear.md").read_text()
    metrics = json.loads((compare_run / "metrics.json").read_text())
    accuracy = metrics["adapters"]["linear"]["accuracy"]
    assert card.startswith("---\nlibrary_name: \"imgxfer\"\npipeline_tag: \"image-classification\"")
    for section in ("## Data", "## Metrics", "## Input", "## Output", "## How to use",
                    "## Intended use", "## Limitations", "## Export check"):
        assert f"\n{section}\n" in card
    assert "`tiny-target`: 9 labelled (3 shots per class), 54 unlabelled, 27 held out" in card
    assert "`horizontal`, `vertical`, `dot`" in card
    # The adapter's own accuracy with its Wilson interval, and the seed.
    assert f"| accuracy | {accuracy:.4f} (" in card and "seed 0" in card
    assert "shape (N, 1, 16, 16)" in card and "float32, 0.0 (black) to 1.0 (white)" in card
    assert "| `logits` | (N, 3) |" in card
    assert "The encoder was pretrained on the source domain only (trained on tiny-source)" in card
    assert 'session = ort.InferenceSession("linear.onnx")' in card
    (example,) = python_blocks(card)  # the card's own example runs against its file
    run_example(example, tmp_path, monkeypatch)
    (printed,) = capsys.readouterr().out.splitlines()
    assert set(eval(printed)) <= {"horizontal", "vertical", "dot"}


def test_dense_models_export_their_logits_or_maps(host, dense_run, tmp_path, monkeypatch):
    from imgxfer.cli.predict_dense import load_model
    from imgxfer.plugin.testing import tiny_scenes

    task, folder = dense_run
    fmt = "onnx" if task == "detect" else "torchscript"
    out = tmp_path / f"{task}{exporting.FORMATS[fmt]}"
    result = invoke("export", "--from", str(folder), "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    model, _, _ = load_model(folder, None, host.registry)
    images = tiny_scenes("x", 6, seed=3, invert=True).images[:]
    images = images.expand(-1, model.encoder.in_channels, -1, -1).contiguous()  # as read: RGB
    with torch.no_grad():
        outputs = model(model.preprocess(images))
    names = ["logits"] if task == "segment" else ["heatmap", "size", "offset"]
    expected = [outputs] if task == "segment" else [outputs[n] for n in names]
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == names
        got = [torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()})]
    else:
        with torch.no_grad():
            got = [torch.jit.load(str(out))(images)]
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True)) <= 1e-4
    card = (tmp_path / f"{task}.md").read_text()
    (example,) = python_blocks(card)
    run_example(example, tmp_path, monkeypatch)  # masks, or boxes decoded by imgxfer
    if task == "detect":  # boxes are decoded outside the model, as the card says
        from imgxfer.nn.dense.detection import decode

        decoded = decode(dict(zip(names, got, strict=True)), stride=model.head.stride)
        assert decoded[0]["boxes"].shape[1] == 4
        assert f"decode(outputs, stride={model.head.stride}" in card
    else:
        assert "| `logits` | (N, 3, 32, 32) |" in card  # two classes and the background


def _unfinished_copy(run, tmp_path):
    """The run without metrics.json, as an interrupted run leaves it."""
    copy = shutil.copytree(run, tmp_path / "unfinished")
    (copy / "metrics.json").unlink()
    return copy


@pytest.mark.parametrize("args, says", [
    (["--from", "{tmp}/nowhere", "--format", "onnx"], "does not exist; give a run folder"),
    (["--format", "tflite"], "unknown export format 'tflite'; choose onnx or torchscript."),
    (["--format", "onnx", "--input-dtype", "int16"],
     "unknown input type 'int16'; choose float32 or uint8."),
    (["--format", "onnx", "--adapter", "mmd"],
     "has no classifier of adapter 'mmd'; it has: finetune, linear."),
    (["--format", "onnx"], "holds classifiers of several adapters (finetune, linear); choose "
                           "one with --adapter."),
    (["--format", "onnx", "--adapter", "linear", "--out", "{tmp}/missing/m.onnx"],
     "the folder '{tmp}/missing' does not exist; create it first."),
    (["--format", "torchscript", "--adapter", "linear", "--out", "{tmp}/old.pt"],
     "'{tmp}/old.pt' already exists; use --force to overwrite it."),
    (["--format", "torchscript", "--adapter", "linear", "--out", "{tmp}/card.pt"],
     "'{tmp}/card.md' (the model card beside --out) already exists; use --force"),
    (["--from", "{unfinished}", "--format", "onnx", "--adapter", "linear", "--out", "{tmp}/x.onnx"],
     "has no metrics.json: it did not finish"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(host, compare_run, tmp_path, args, says):
    (tmp_path / "old.pt").write_bytes(b"an earlier export")
    (tmp_path / "card.md").write_text("an earlier card")
    unfinished = _unfinished_copy(compare_run, tmp_path / "runs")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = [a.format(tmp=tmp_path, unfinished=unfinished) for a in args]
    if "--from" not in args:
        args = ["--from", str(compare_run), *args]
    result = invoke("export", *args)
    assert_one_sentence(result, says.format(tmp=tmp_path))
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_export_that_computes_otherwise_is_refused_and_keeps_the_old_file(
        host, compare_run, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"a good earlier export")
    run_file = exporting._run_torchscript

    def off_by_a_little(data, images):
        return [o + 1e-3 for o in run_file(data, images)]

    monkeypatch.setattr(exporting, "_run_torchscript", off_by_a_little)
    result = invoke("export", "--from", str(compare_run), "--adapter", "linear", "--format",
                    "torchscript", "--out", str(out), "--force")
    assert_one_sentence(result, "the TorchScript export does not compute what the run's model "
                                "does (outputs up to 0.001 away on 7 check images, more than "
                                "0.0001 allowed), so nothing was written.")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no card, no temporary file
    assert out.read_bytes() == b"a good earlier export"


def test_onnx_without_the_export_extra_is_one_sentence(host, compare_run, tmp_path,
                                                       monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    result = invoke("export", "--from", str(compare_run), "--adapter", "linear", "--format",
                    "onnx", "--out", str(tmp_path / "m.onnx"))
    assert_one_sentence(result, "--format onnx needs onnxruntime, which is not installed: "
                                "pip install 'imgxfer[export]'.")
    assert list(tmp_path.iterdir()) == []


def test_the_guides_serving_examples_run_as_written(host, compare_run, tmp_path, monkeypatch,
                                                    capsys):
    """docs/user-guide/export.md: onnxruntime in five lines, and TorchScript."""
    blocks = python_blocks(GUIDE.read_text(encoding="utf-8"))
    (onnx_example,) = [b for b in blocks if "onnxruntime as ort" in b]
    (torchscript_example,) = [b for b in blocks if "torch.jit.load" in b]
    assert len(onnx_example.strip().splitlines()) == 5
    for fmt in ("onnx", "torchscript"):
        result = invoke("export", "--from", str(compare_run), "--adapter", "linear",
                        "--format", fmt, "--out", str(tmp_path / f"model{exporting.FORMATS[fmt]}"),
                        "--force")
        assert result.exit_code == 0, result.output
    capsys.readouterr()
    run_example(onnx_example, tmp_path, monkeypatch)
    run_example(torchscript_example, tmp_path, monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.count(" ") >= 3 for line in printed)  # 4 indices


def test_one_seed_of_a_seeds_run_cards_the_spread_over_its_seeds(host, compare_run, tmp_path):
    seed = shutil.copytree(compare_run, tmp_path / "seeds" / "seed-0")
    summary = {"seeds": [0, 1, 2], "adapters": {"linear": {
        "seeds": 3, "accuracy_mean": 0.8765, "accuracy_std": 0.0432,
        "macro_f1_mean": 0.8611, "macro_f1_std": 0.05}}}
    (seed.parent / "summary.json").write_text(json.dumps(summary))
    result = invoke("export", "--from", str(seed), "--adapter", "linear", "--format",
                    "torchscript", "--out", str(tmp_path / "m.pt"))
    assert result.exit_code == 0, result.output
    assert ("Over the seeds 0, 1, 2 of this run (`summary.json`): accuracy 0.8765 ± 0.0432, "
            "macro F1 0.8611 ± 0.0500") in (tmp_path / "m.md").read_text()


def test_the_card_of_another_adapter_than_the_first_judges_that_adapter():
    """metrics.json's ``target`` is the first adapter's: the card's warnings of another
    adapter read that adapter's accuracy and its own synthetic delta only."""
    from imgxfer.core.config import RunConfig
    from imgxfer.run.metrics import RunMetrics
    from imgxfer.run.uncertainty import noise_warnings
    from imgxfer.tasks.classify.export import _as_run_classifier

    metrics = RunMetrics.from_json({
        "target": {"accuracy": 0.9, "n_test": 500, "chance": 0.1},
        "adapters": {"linear": {"accuracy": 0.9}, "finetune": {"accuracy": 0.5}},
        "baselines": {"source model": {"accuracy": 0.8}},
        "synthetic_delta": {"linear": {"with": 0.9, "without": 0.7, "delta": 0.2},
                            "finetune": {"with": 0.5, "without": 0.6, "delta": -0.1}}})
    config = RunConfig(compare=["linear", "finetune"])
    judged = _as_run_classifier(metrics, config, "finetune")
    assert list(judged.adapters) == ["finetune", "linear"]
    assert judged.target.accuracy == 0.5 and judged.target.accuracy_interval[1] < 0.6
    assert list(judged.synthetic_delta) == ["finetune"]
    assert [w.split(" ")[0] for w in noise_warnings(judged)] == ["finetune", "finetune"]
    assert noise_warnings(_as_run_classifier(metrics, config, "linear")) == []


def test_markdown_cells_keep_their_pipes_escaped():
    from imgxfer.run.markdown import table

    assert table(["key", "value"], [["a|b", 1]]).splitlines() == [
        "| key | value |", "|---|---|", "| a\\|b | 1 |"]
