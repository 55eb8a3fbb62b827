"""`imgxfer predict`: a run's classifier on new images, and every bad input."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_bars, tiny_compare_run
from PIL import Image

from imgxfer.cli.app import cli
from imgxfer.cli.predict import accuracy_note, load_classifier, predict_proba, run_class_names
from imgxfer.data.classnames import class_matches


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A tiny run that saved two classifiers (--compare finetune,linear)."""
    folder, result = tiny_compare_run(tmp_path_factory, "finetune,linear")
    # The run says how to use its classifier, as one copyable line.
    assert (f"imgxfer predict IMAGES --from {folder} --adapter finetune  (or --adapter linear)\n"
            in result.output)
    return folder


def predict(*args):
    return CliRunner().invoke(cli, ["predict", *args])


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predicts_a_labelled_dataset_with_the_chosen_classifier(host, compare_run, tmp_path):
    out = tmp_path / "p.csv"
    result = predict("tiny-target", "--from", str(compare_run), "--adapter", "finetune",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = read(out)
    assert len(rows) == 90 and list(rows[0]) == ["index", "predicted", "confidence", "label"]
    # The same numbers as the classifier itself gives, and far above chance (1/3).
    loaded = load_classifier(compare_run, "finetune", host.registry)
    data = tiny_bars("tiny-target", 30, seed=7, invert=True)
    proba = predict_proba(loaded, data.images, torch.device("cpu"))
    assert [r["predicted"] for r in rows] == [loaded.class_names[i] for i in proba.argmax(1)]
    correct = sum(r["predicted"] == r["label"] for r in rows)
    assert correct / 90 > 0.8
    assert f"accuracy {correct / 90:.4f} on 90 labelled images." in result.output
    assert "'finetune'" in result.output


def bars_as_pngs(folder, n_per_class: int):
    """A folder of loose PNGs 0.png, 1.png, ...: tiny bars, light shapes on dark (the
    reverse of the run's target)."""
    folder.mkdir()
    for i, image in enumerate(tiny_bars("x", n_per_class, seed=3).images):
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_loose_images_and_a_classifier_file(host, compare_run, tmp_path):
    photos = bars_as_pngs(tmp_path / "photos", 1)
    out = tmp_path / "p.csv"
    result = predict(str(photos), "--from", str(compare_run / "classifier-linear.safetensors"),
                     "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = read(out)
    assert [r["path"] for r in rows] == [str(photos / f"{i}.png") for i in range(3)]
    assert all(r["predicted"] in ("horizontal", "vertical", "dot") for r in rows)
    assert all(0 < float(r["confidence"]) <= 1 for r in rows)
    assert "accuracy" not in result.output  # nothing labelled

    # --limit N reads the first N readable images and stops: an unreadable file among
    # them is skipped (and said), one after them is never opened.
    (photos / "0a.png").write_bytes(b"not an image")
    (photos / "9.png").write_bytes(b"not an image")
    result = predict(str(photos), "--from", str(compare_run), "--adapter", "linear",
                     "--limit", "2", "-o", "-")
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:]] == [
        str(photos / "0.png"), str(photos / "1.png")]
    assert "skipped 1 unreadable file (0a.png:" in result.output


def test_the_grid_of_a_generate_folder_is_not_classified(host, compare_run, tmp_path):
    """generate writes 000.png, 001.png, ... and grid.png (all of them in one image):
    only the samples are classified; a grid.png among other images still is one."""
    from imgxfer.cli.generate import GRID_FILE

    drawn = bars_as_pngs(tmp_path / "drawn", 1)
    for i in range(3):
        (drawn / f"{i}.png").rename(drawn / f"{i:03d}.png")
    shutil.copy(drawn / "000.png", drawn / GRID_FILE)
    result = predict(str(drawn), "--from", str(compare_run), "--adapter", "linear", "-o", "-")
    assert result.exit_code == 0, result.output
    paths = [line.split(",")[0] for line in result.stdout.splitlines()[1:]]
    assert paths == [str(drawn / f"{i:03d}.png") for i in range(3)]
    photos = bars_as_pngs(tmp_path / "photos", 1)
    shutil.copy(photos / "0.png", photos / GRID_FILE)
    result = predict(str(photos), "--from", str(compare_run), "--adapter", "linear", "-o", "-")
    assert str(photos / GRID_FILE) in result.stdout


def test_images_far_darker_than_the_runs_target_are_warned_about(host, compare_run, tmp_path):
    # The run's target is light with dark shapes (inverted bars); these are the reverse.
    photos = bars_as_pngs(tmp_path / "photos", 2)
    result = predict(str(photos), "--from", str(compare_run), "--adapter", "linear", "-o", "-")
    assert result.exit_code == 0, result.output
    assert "warning: these images are darker on average (0." in result.output
    assert "read them with --dataset-opt invert=true" in result.output
    result = predict(str(photos), "--from", str(compare_run), "--adapter", "linear", "-o", "-",
                     "--dataset-opt", "invert=true")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    # Images like the run's own target raise no warning.
    result = predict("tiny-target", "--from", str(compare_run), "--adapter", "linear", "-o", "-")
    assert result.exit_code == 0 and "warning" not in result.output


def test_accuracy_leaves_out_classes_the_classifier_does_not_know():
    rows = [{"label": "dot", "predicted": "dot"}, {"label": "dot", "predicted": "vertical"},
            {"label": "ring", "predicted": "dot"}, {"predicted": "dot"}]
    assert accuracy_note(rows, ["dot", "vertical"]) == (
        "accuracy 0.5000 on 2 labelled images; 1 image of classes the classifier does not "
        "know (ring) not scored.")
    assert accuracy_note(rows[2:], ["dot"]).startswith("no accuracy: the labels name only")
    assert accuracy_note(rows[3:], ["dot"]) == ""


def test_class_folders_spelled_otherwise_are_scored_as_the_runs_classes(host, compare_run,
                                                                        tmp_path):
    data = tiny_bars("x", 2, seed=3)
    for i, image in enumerate(data.images):  # light on dark: read with invert=true
        folder = tmp_path / "scans" / data.class_names[int(data.labels[i])].upper()
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    result = predict(f"folder:{tmp_path / 'scans'}", "--from", str(compare_run), "--adapter",
                     "linear", "-o", "-", "--dataset-opt", "invert=true")
    assert result.exit_code == 0, result.output
    assert "labels read as the run's classes: DOT as dot, HORIZONTAL as horizontal" in result.output
    assert "accuracy" in result.output and "does not know" not in result.output
    assert {r.split(",")[-1] for r in result.stdout.splitlines()[1:]} == {
        "horizontal", "vertical", "dot"}


def test_class_names_match_in_any_case_and_as_numbers():
    assert class_matches("Three", ["3", "three"]) == [1]  # the same name first
    assert class_matches("3", ["zero", "one", "two", "three"]) == [3]
    assert class_matches("seven", ["5", "7"]) == [1]
    assert class_matches("COAT", ["coat", "shirt"]) == [0]
    assert class_matches("cat", ["Cat", "CAT"]) == [0, 1]  # ambiguous in any case
    assert class_matches("66", ["6", "7"]) == [] and class_matches("", ["a"]) == []
    assert class_matches("T-Shirt/Top", ["t shirt top", "coat"]) == [0]  # the same words
    renamed, ambiguous = run_class_names(["3", "Cat", "dog", "bird"], ["three", "cat", "CAT", "dog"])
    assert renamed == {"3": "three"} and ambiguous == {"Cat": ["cat", "CAT"]}


def test_choosing_among_several_classifiers(host, compare_run, tmp_path):
    result = predict("tiny-target", "--from", str(compare_run), "-o", str(tmp_path / "p.csv"))
    assert result.exit_code == 2
    assert "holds classifiers of several adapters (finetune, linear); choose one with --adapter" \
        in result.output
    result = predict("tiny-target", "--from", str(compare_run), "--adapter", "mmd")
    assert result.exit_code == 2 and "no classifier of adapter 'mmd'; it has: finetune, linear" \
        in result.output
    assert not (tmp_path / "p.csv").exists()


def test_bad_run_folders(host, compare_run, tmp_path):
    assert "does not exist" in predict("tiny-target", "--from", str(tmp_path / "nope")).output
    seeds = tmp_path / "multi"
    (seeds / "seed-0").mkdir(parents=True)
    (seeds / "seed-1").mkdir()
    result = predict("tiny-target", "--from", str(seeds))
    assert result.exit_code == 2 and "one run per seed (seed-0, seed-1)" in result.output

    damaged = tmp_path / "damaged"
    shutil.copytree(compare_run, damaged)
    (damaged / "classifier-linear.safetensors").write_bytes(b"\x00" * 40)
    result = predict("tiny-target", "--from", str(damaged), "--adapter", "linear")
    assert result.exit_code == 2 and "cannot be read: it is truncated, corrupt" in result.output

    other = tmp_path / "other-architecture"
    shutil.copytree(compare_run, other)
    config = other / "config.toml"
    config.write_text(config.read_text().replace("width = 4", "width = 8"))
    result = predict("tiny-target", "--from", str(other), "--adapter", "finetune")
    assert result.exit_code == 2
    assert "does not fit encoder 'smallcnn' with the options of its config.toml" in result.output
    assert "Traceback" not in result.output


def test_labels_of_other_classes_and_existing_output(host, compare_run, tmp_path):
    out = tmp_path / "p.csv"
    result = predict("digits", "--from", str(compare_run), "--adapter", "linear", "--limit",
                     "5", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "no accuracy: the labels name only classes the classifier does not know" in result.output
    before = out.read_bytes()
    result = predict("digits", "--from", str(compare_run), "--adapter", "linear", "-o", str(out))
    assert result.exit_code == 2 and "already exists; use --force" in result.output
    assert out.read_bytes() == before
    # A wrong input is named before the existing output file.
    result = predict("digits", "--from", str(tmp_path / "nope"), "-o", str(out))
    assert result.exit_code == 2 and "does not exist" in result.output
    result = predict("digits", "--from", str(compare_run), "--adapter", "linear", "-o", str(out),
                     "--dataset-opt", "invert")
    assert result.exit_code == 2 and "expects key=value" in result.output
    assert "--limit must be a positive number" in predict(
        "digits", "--from", str(compare_run), "--limit", "0").output


def test_files_for_a_run_on_glyph_data_are_put_in_its_layout(host, compare_run, tmp_path):
    """A run whose target was in the glyph layout (digits, mnist) records it in the
    classifier file; loose files are then read with fit=glyph, and it says so."""
    from imgxfer.core.runfolder import atomic_save_tensors, read_tensors

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text((compare_run / "config.toml").read_text())
    tensors, metadata = read_tensors(compare_run / "classifier-linear.safetensors")
    assert metadata["target_layout"] == ""  # the tiny bars are read as they are
    metadata.pop("checksum", None)
    atomic_save_tensors(run / "classifier.safetensors", tensors,
                        {**metadata, "target_layout": "glyph"})
    photos = bars_as_pngs(tmp_path / "photos", 1)
    result = predict(str(photos), "--from", str(run), "-o", "-")
    assert result.exit_code == 0, result.output
    assert "reading the images in the glyph layout of the run's target" in result.output
    result = predict(str(photos), "--from", str(run), "-o", "-", "--dataset-opt", "fit=crop")
    assert result.exit_code == 0 and "glyph layout" not in result.output


def test_files_are_read_as_the_run_read_its_target_files():
    from imgxfer.cli.predict import reading_options
    from imgxfer.core.config import RunConfig

    config = RunConfig(target="folder:scans", source="syndigits")
    config.options["target"] = {"size": 48, "fit": "pad", "invert": True, "strict": True}
    assert reading_options(config) == {"size": 48, "channels": 0, "background": "white",
                                       "fit": "pad", "invert": True}
    config = RunConfig(target="digits")
    config.options["target"] = {"size": 48}  # not a files dataset: its own option
    assert reading_options(config)["size"] == 0  # 0: as the run's encoder asks
    # digits is in the glyph layout (the classifier file says so): new files are put in it.
    assert reading_options(config, "glyph")["fit"] == "glyph"
    assert reading_options(RunConfig(target="folder:scans"), "glyph")["fit"] == "crop"


def test_a_pretrained_encoder_is_rebuilt_offline_from_the_run_weights(host, tmp_path,
                                                                       monkeypatch):
    """A run made with pretrained=imagenet, predicted offline: the ImageNet weights
    cannot be had, so the encoder is rebuilt with random weights, the run's weights are
    loaded and the saved fingerprint confirms it is the same network."""
    import json as _json

    from imgxfer.cli.predict import load_classifier
    from imgxfer.components.encoders import torchvision_backbones
    from imgxfer.core.config import RunConfig
    from imgxfer.core.errors import UserError
    from imgxfer.core.runfolder import atomic_save_tensors
    from imgxfer.nn.classifier import Classifier
    from imgxfer.run.artifacts import fingerprint

    config = RunConfig(source="tiny-source", target="tiny-target", encoder="resnet18")
    config.options["encoder"] = {"pretrained": "imagenet", "input_size": 32}
    (tmp_path / "config.toml").write_text(config.to_toml())
    trained = Classifier(torchvision_backbones.TorchvisionEncoder(
        "resnet18", pretrained="none", input_size=32, seed=5), 3)
    atomic_save_tensors(tmp_path / "classifier.safetensors", trained.state_dict(),
                        {"encoder": "resnet18", "adapter": "linear",
                         "classes": _json.dumps(["horizontal", "vertical", "dot"]),
                         "fingerprint": _json.dumps(fingerprint(trained, torch.device("cpu")))})
    asked = []

    def no_download(*args, **kwargs):  # what an offline machine says
        asked.append("imagenet")
        raise UserError("resnet18: the ImageNet weights are not available offline.")

    real = torchvision_backbones._weights_source
    monkeypatch.setattr(torchvision_backbones, "_weights_source",
                        lambda arch, pretrained: no_download() if pretrained == "imagenet"
                        else real(arch, pretrained))
    loaded = load_classifier(tmp_path, None, host.registry)
    assert asked == ["imagenet"]  # tried as the run built it, then rebuilt without
    x = torch.rand(2, 1, 16, 16)
    trained.eval()
    expected = trained(trained.encoder.preprocess(x)).softmax(1)
    torch.testing.assert_close(predict_proba(loaded, x, torch.device("cpu")), expected)


def test_a_damaged_classifier_is_refused_not_used(host, compare_run, tmp_path):
    """Bytes flipped inside the tensor data: safetensors still parses the file, the
    checksum saved with it does not match."""
    damaged = tmp_path / "flipped"
    shutil.copytree(compare_run, damaged)
    path = damaged / "classifier-finetune.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    result = predict("tiny-target", "--from", str(damaged), "--adapter", "finetune")
    assert result.exit_code == 2
    assert "is damaged: its tensors do not match the checksum saved with them" in result.output


def fake_run_file(folder, name, tensors, metadata):
    """A run folder holding a default config.toml and one hand-made tensors file."""
    from imgxfer.core.config import RunConfig
    from imgxfer.core.runfolder import atomic_save_tensors

    (folder / "config.toml").write_text(RunConfig().to_toml())
    atomic_save_tensors(folder / name, tensors, metadata)


def test_a_generator_file_is_not_a_classifier(host, tmp_path):
    fake_run_file(tmp_path, "generator.safetensors", {"w": torch.zeros(2)},
                  {"component": "gan", "classes": '["a", "b"]'})
    result = predict("digits", "--from", str(tmp_path / "generator.safetensors"))
    assert result.exit_code == 2
    assert result.output.strip().endswith("is a generator file of `imgxfer run`; give the run "
                                          "folder or its classifier*.safetensors.")


def test_csv_to_standard_output_and_a_bad_device(host, compare_run):
    result = predict("tiny-target", "--from", str(compare_run), "--adapter", "linear",
                     "--limit", "2", "--out", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "index,predicted,confidence,label"
    assert len(result.stdout.splitlines()) == 3
    result = predict("tiny-target", "--from", str(compare_run), "--device", "foo")
    assert result.exit_code == 2
    assert "device must be auto, cpu, cuda, cuda:N or mps, got 'foo'" in result.output


def test_a_rebuilt_network_that_computes_something_else_is_refused(host, compare_run,
                                                                   monkeypatch):
    from imgxfer.run import artifacts

    monkeypatch.setattr(artifacts, "fingerprint", lambda model, device: [[0.0, 0.0, 0.0]] * 2)
    result = predict("tiny-target", "--from", str(compare_run), "--adapter", "linear")
    assert result.exit_code == 2
    assert "does not compute what the run's did" in result.output


def test_a_plugin_adapters_own_model_is_named(host, tmp_path):
    fake_run_file(tmp_path, "classifier.safetensors", {"body.w": torch.zeros(2)},
                  {"encoder": "smallcnn", "classes": '["a", "b"]'})
    result = predict("digits", "--from", str(tmp_path))
    assert result.exit_code == 2
    assert "holds a model other than an encoder with a linear head" in result.output
