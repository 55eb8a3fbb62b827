"""`imgxfer run --task segment|detect` and `imgxfer predict` of its models, end to end on
tiny scenes (squares and bars, the target inverted), and every bad input of the issue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgxfer.cli.app import cli

TINY_SCENES = ["--source", "tiny-scenes", "--target", "tiny-scenes-inverted",
               "--encoder-opt", "width=4", "--encoder-steps", "40", "--adapter-steps", "30",
               "--shots", "2", "--seed", "0"]
SEGMENT = "source-only,finetune,adabn,self-training,advent,adaptsegnet,target-only"
DETECT = "source-only,finetune,adabn,self-training,target-only"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _fake_host():
    from conftest import FakePlugin

    from imgxfer.plugin import host as plugins

    host = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(FakePlugin(), "fake")
    plugins._HOST = host
    return plugins


@pytest.fixture(scope="module", params=["segment", "detect"])
def dense_run(request, tmp_path_factory):
    """One finished tiny run per task, with every adapter of that task compared."""
    task = request.param
    out = tmp_path_factory.mktemp(f"{task}-runs")
    plugins = _fake_host()
    try:
        # Boxes are learnt more slowly than masks: the detector gets more of everything.
        slower = [] if task == "segment" else ["--encoder-opt", "width=8", "--encoder-steps",
                                               "120", "--adapter-steps", "80"]
        result = invoke("run", "--task", task, *TINY_SCENES, *slower, "--out", str(out),
                        "--compare", SEGMENT if task == "segment" else DETECT, "--json")
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return task, folder, json.loads((folder / "metrics.json").read_text())


def test_a_dense_run_writes_its_folder(dense_run) -> None:
    task, folder, metrics = dense_run
    assert metrics["task"] == task and metrics["model"]["head"] == (
        "unet" if task == "segment" else "centernet")
    names = (SEGMENT if task == "segment" else DETECT).split(",")
    assert list(metrics["adapters"]) == names
    key = "miou" if task == "segment" else "map_50"
    for name in names:
        assert 0 <= metrics["adapters"][name][key] <= 1
        assert (folder / f"model-{name}.safetensors").is_file()
    assert metrics["data"]["target"] == {"name": "tiny-scenes-inverted",
                                         "domain": "tiny-scenes-inverted", "labelled": 2,
                                         "unlabelled": 26, "test": 12}
    report = (folder / "report.html").read_text()
    assert "Test scenes: truth and predictions" in report and "self-training" in report
    assert (folder / "predictions.png").stat().st_size > 1000
    assert "source_val" in metrics["model"]


def test_adapting_to_the_inverted_scenes_beats_the_source_model(dense_run) -> None:
    """The target is the source inverted: the source model fails there, and training on
    two labelled target scenes (finetune), or on them plus confident pseudo-labels
    (self-training), must recover much of it (seeded: the same numbers every run)."""
    task, _, metrics = dense_run
    key = "miou" if task == "segment" else "map_50"
    scores = {name: m[key] for name, m in metrics["adapters"].items()}
    assert scores["finetune"] > scores["source-only"] + 0.1, scores
    assert scores["self-training"] > scores["source-only"] + 0.1, scores


def test_predict_writes_masks_or_coco_boxes_at_each_image_size(dense_run, tmp_path) -> None:
    task, folder, _ = dense_run
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 50), 230, np.uint8)).save(images / "wide.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "square.jpg")
    out = tmp_path / ("masks" if task == "segment" else "boxes.json")
    plugins = _fake_host()
    try:
        result = invoke("predict", str(images), "--from", str(folder), "--adapter",
                        "finetune", "--out", str(out))
        again = invoke("predict", str(images), "--from", str(folder), "--adapter",
                       "finetune", "--out", str(out))
        unchosen = invoke("predict", str(images), "--from", str(folder), "--out",
                          str(tmp_path / "other"))
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    assert again.exit_code == 2 and "pass --force" in again.output
    # Issue 29, item 2: several adapters and no --adapter is a question, as in classify.
    assert unchosen.exit_code == 2 and "choose one with --adapter" in unchosen.output
    assert "source-only" in unchosen.output and not (tmp_path / "other").exists()
    if task == "segment":
        with Image.open(out / "masks" / "wide.png") as mask:
            assert mask.mode == "P" and mask.size == (50, 40)
            assert np.asarray(mask).max() <= 2
        assert (out / "classes.txt").read_text().split() == ["background", "square", "bar"]
    else:
        coco = json.loads(out.read_text())
        assert [i["file_name"] for i in coco["images"]] == ["square.jpg", "wide.png"]
        assert [c["name"] for c in coco["categories"]] == ["square", "bar"]
        for ann in coco["annotations"]:
            image = coco["images"][ann["image_id"] - 1]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and x + w <= image["width"] + 1e-3 and 0 <= ann["score"] <= 1


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels and that holds none: what
    a decompression bomb looks like to Pillow before it decodes anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_predict_refuses_a_decompression_bomb(dense_run, tmp_path) -> None:
    """Issue 29, item 14: a 10^10-pixel PNG is one sentence, as in classification."""
    _, folder, _ = dense_run
    (tmp_path / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    plugins = _fake_host()
    try:
        result = invoke("predict", str(tmp_path / "bomb.png"), "--from", str(folder),
                        "--adapter", "finetune", "--out", str(tmp_path / "out"))
    finally:
        plugins.reset_host()
    assert result.exit_code == 2, result.output
    assert "bomb.png' cannot be read (Image size (10000000000 pixels) exceeds limit" in (
        result.output)
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_predict_out_dash_is_standard_output(dense_run, tmp_path, monkeypatch) -> None:
    """Issue 29, item 15: ``--out -`` puts a detect run's COCO JSON on standard output
    (not into a file named '-'); a segment run's masks cannot go there: one sentence."""
    task, folder, _ = dense_run
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    plugins = _fake_host()
    try:
        result = invoke("predict", "a.png", "--from", str(folder), "--adapter", "finetune",
                        "--out", "-")
    finally:
        plugins.reset_host()
    assert not (tmp_path / "-").exists()
    if task == "segment":
        assert result.exit_code == 2, result.output
        assert "a segment run writes a folder of mask PNGs" in result.output
        return
    assert result.exit_code == 0, result.output
    coco = json.loads(result.stdout)
    assert [i["file_name"] for i in coco["images"]] == ["a.png"]
    assert "to standard output" in result.stderr


@pytest.mark.parametrize("args, says", [
    (["--task", "segment", "--source", "tiny-source"], "is for --task classify"),
    (["--task", "detect", "--adapter", "advent"], "'advent' is for --task segment"),
    (["--task", "segment", "--generator", "gan", "--synthesis", "text"],
     "add --synthesis translate"),
    (["--task", "segment", "--head", "centernet"], "head 'centernet' is for --task detect"),
    (["--head", "unet"], "use it with --task segment or --task detect"),
    (["--task", "segment", "--seeds", "0,1"], "--seeds is for --task classify"),
    (["--task", "detect", "--shots", "40"], "too few for 40 labelled scenes"),
    (["--task", "segment", "--augment", "light"], "augments colours only"),
])
def test_bad_dense_input_is_one_sentence(tmp_path, args, says) -> None:
    plugins = _fake_host()
    try:
        result = invoke("run", *TINY_SCENES, *args, "--out", str(tmp_path))
    finally:
        plugins.reset_host()
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("task, augment", [("segment", "auto"), ("detect", "style")])
def test_translate_keeps_the_source_annotations(tmp_path, task, augment) -> None:
    plugins = _fake_host()
    try:
        result = invoke("run", "--task", task, *TINY_SCENES, "--generator", "gan",
                        "--synthesis", "translate", "--generator-steps", "3",
                        "--generator-opt", "width=8", "--adapter", "finetune",
                        "--augment", augment, "--out", str(tmp_path))
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["generator"]["translated_scenes"] == 36  # the source minus its tenth
    assert (folder / "generator.safetensors").is_file()
    config = (folder / "config.toml").read_text()
    assert "image_size = 32" in config  # the scenes' size, which is also the cap
    # auto leaves grey-to-grey scenes as they are; style recolours them
    assert f'augment = "{"style" if augment == "style" else ""}"' in config
    report = (folder / "report.html").read_text()
    assert ("<td>augmentation</td><td>style</td>" if augment == "style"
            else "<td>augmentation</td><td>each component’s own (auto:") in report


def test_list_shows_each_components_tasks() -> None:
    plugins = _fake_host()
    try:
        result = invoke("list", "adapters", "--json")
    finally:
        plugins.reset_host()
    rows = json.loads(result.output)
    tasks = {(r["name"], tuple(r["tasks"])) for r in rows}
    assert ("advent", ("segment",)) in tasks and ("dann", ("classify",)) in tasks
    assert ("finetune", ("classify",)) in tasks and ("finetune", ("segment", "detect")) in tasks


def test_task_help_names_the_tasks() -> None:
    result = invoke("run", "--help")
    assert "--task [classify|segment|detect]" in result.output and "--head" in result.output


def test_auto_recolours_a_grey_source_for_a_colour_target_in_every_stage(host, tmp_path) -> None:
    from dataclasses import replace

    import torch

    from imgxfer.core.config import RunConfig
    from imgxfer.plugin.testing import tiny_scenes
    from imgxfer.tasks.dense.run import prepare

    def colour_scenes(n: int = 40, seed: int = 0):
        grey = tiny_scenes("tiny-colour-scenes", n, seed=seed + 7, invert=True)
        tint = torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
        return replace(grey, images=grey.images.data * tint)

    colour_scenes.tasks = ("segment", "detect")  # type: ignore[attr-defined]
    host.registry.add("datasets", "tiny-colour-scenes", colour_scenes, "test")
    config = RunConfig(task="segment", source="tiny-scenes", target="tiny-colour-scenes",
                       shots=2, compare=["source-only", "finetune", "adaptsegnet"],
                       out=str(tmp_path)).for_task()
    plan = prepare(config, host.registry)
    assert plan.config.augment == "style" and "grey" in plan.config.augment_reason
    assert all(adapter.recipe.colours for adapter in plan.adapters.values())
    grey = prepare(replace(config, target="tiny-scenes-inverted"), host.registry)
    assert grey.config.augment == "" and not any(
        adapter.recipe.colours for adapter in grey.adapters.values())
