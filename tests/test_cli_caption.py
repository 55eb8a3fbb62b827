"""`imgxfer caption`: datasets, folders and single images to captions.jsonl, and every
bad input as one sentence with exit status 2."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from imgxfer.cli.app import cli


def invoke(*args):
    return CliRunner().invoke(cli, ["caption", *args])


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def draw(path, box, *, fill=0, background=255, mode="L", size=64):
    image = Image.new(mode, (size, size), background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_digits_dataset(host, tmp_path):
    out = tmp_path / "digits.jsonl"
    result = invoke("digits", "--shots", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 10 captions" in result.stderr
    rows = read_rows(out)
    assert [r["label"] for r in rows] == ["zero", "one", "two", "three", "four", "five", "six",
                                          "seven", "eight", "nine"]
    assert all(isinstance(r["index"], int) for r in rows)
    for r in rows:
        assert r["caption"].startswith(f"a handwritten digit {r['label']}, white ink on black, ")
        assert r["caption"].endswith(", domain digits")
        assert r["attributes"]["text"] in r["caption"]
        assert r["attributes"]["background"] == "black"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_input_same_file_and_force(host, tmp_path):
    out = tmp_path / "c.jsonl"
    assert invoke("tiny-target", "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    assert invoke("tiny-target", "--out", str(out)).exit_code == 2  # no silent overwrite
    result = invoke("tiny-target", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == before and len(before.splitlines()) == 90


def test_limit_options_and_default_out(host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("tiny-target", "--limit", "4", "--captioner-opt", "attributes=false")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "captions.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["caption"] == "a tiny shape horizontal, domain tiny-target"
    assert "ink" in rows[0]["attributes"]  # the numbers are still written
    # An existing folder receives captions.jsonl.
    (tmp_path / "out").mkdir()
    result = invoke("tiny-target", "--shots", "2", "--limit", "5", "--dataset-opt",
                    "n_per_class=3", "--captioner-opt", "template={label} in {domain}",
                    "--out", "out")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "out" / "captions.jsonl")
    assert [r["label"] for r in rows] == ["horizontal", "horizontal", "vertical", "vertical", "dot"]
    assert [r["index"] for r in rows] == [0, 1, 3, 4, 6]
    assert rows[0]["caption"] == "horizontal in tiny-target"


def test_folder_of_loose_images(host, tmp_path, monkeypatch):
    folder = tmp_path / "scans"
    draw(folder / "left.png", (2, 20, 18, 44))
    draw(folder / "right.png", (46, 20, 62, 44))
    draw(folder / "sub" / "ignored.png", (0, 0, 8, 8))  # one sub-folder: not classes
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "c.jsonl"
    result = invoke(str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file (broken.png" in result.stderr
    rows = read_rows(out)
    # Absolute paths, as predict writes them (issue 29, item 10), also for a folder
    # given relative to the working directory.
    assert [r["path"] for r in rows] == [str(folder / "left.png"), str(folder / "right.png")]
    assert all("label" not in r for r in rows)
    left, right = (r["caption"] for r in rows)
    assert left.startswith("a picture of unknown class, black ink on white, ")
    assert ", left, " in left and ", right, " in right
    assert left.endswith("domain scans")
    # One image file.
    result = invoke(str(folder / "right.png"), "--out", str(tmp_path / "one.jsonl"))
    assert result.exit_code == 0, result.output
    (row,) = read_rows(tmp_path / "one.jsonl")
    assert row["path"] == str(folder / "right.png") and row["caption"] == right
    monkeypatch.chdir(tmp_path)
    assert invoke("scans", "--out", "rel.jsonl").exit_code == 0
    assert [r["path"] for r in read_rows(tmp_path / "rel.jsonl")] == [r["path"] for r in rows]


def test_a_file_name_that_is_not_utf8(host, tmp_path):
    """Issue 29, item 14: a Latin-1 file name (byte 0xe9) is written with that byte as
    \\xe9, not a UnicodeEncodeError; the folder: dataset's path column likewise."""
    folder = tmp_path / "scans"
    draw(folder / os.fsdecode(b"caf\xe9.png"), (2, 20, 18, 44))
    draw(folder / "plain.png", (46, 20, 62, 44))
    out = tmp_path / "c.jsonl"
    result = invoke(str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in read_rows(out)] == [f"{folder}/caf\\xe9.png", f"{folder}/plain.png"]
    for name in ("a", "b"):
        draw(tmp_path / "classes" / name / os.fsdecode(b"\xff" + name.encode() + b".png"),
             (2, 20, 18, 44))
    result = invoke(f"folder:{tmp_path / 'classes'}", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert read_rows(out)[0]["path"] == str(tmp_path / "classes" / "a" / "\\xffa.png")


def test_folder_of_class_folders(host, tmp_path):
    draw(tmp_path / "shapes" / "big" / "a.png", (4, 4, 60, 60), fill=(200, 0, 0),
         background=(255, 255, 255), mode="RGB")
    draw(tmp_path / "shapes" / "small" / "b.png", (28, 28, 36, 36), fill=(0, 0, 200),
         background=(255, 255, 255), mode="RGB")
    out = tmp_path / "c.jsonl"
    result = invoke(str(tmp_path / "shapes"), "--out", str(out))
    assert result.exit_code == 0, result.output
    big, small = read_rows(out)
    assert (big["label"], small["label"]) == ("big", "small")
    assert big["path"].endswith("big/a.png") and small["path"].endswith("small/b.png")
    assert "red ink on white" in big["caption"] and ", large, " in big["caption"]
    assert "blue ink on white" in small["caption"] and ", small, centred, " in small["caption"]


def test_help():
    result = CliRunner().invoke(cli, ["caption", "--help"])
    assert result.exit_code == 0
    for text in ("PATH_OR_DATASET", "--out", "--limit", "--shots", "--captioner-opt", "--force",
                 "captions.jsonl"):
        assert text in result.output
    assert "caption" in CliRunner().invoke(cli, ["--help"]).output


@pytest.mark.parametrize("args, message", [
    (["no-such-dataset"], "'no-such-dataset' is neither a registered dataset"),
    (["{tmp}/missing"], "is neither a registered dataset"),
    (["tiny-target", "--limit", "0"], "--limit must be a positive number of images, got 0."),
    (["tiny-target", "--limit", "-3"], "--limit must be a positive number of images, got -3."),
    (["tiny-target", "--shots", "0"], "--shots must be a positive number"),
    (["tiny-target", "--out", "{tmp}/nowhere/"], "no such folder"),
    (["tiny-target", "--out", "{tmp}/nowhere/c.jsonl"], "does not exist"),
    (["tiny-target", "--out", "{tmp}/exists.jsonl"], "already exists; use --force"),
    (["tiny-target", "--captioner", "nope"], "unknown captioner 'nope'"),
    (["tiny-target", "--captioner-opt", "template={colour}"], "unknown field(s) {colour}"),
    (["tiny-target", "--captioner-opt", "size=3"], "has no option 'size'"),
    (["tiny-target", "--dataset-opt", "colour=red"], "has no option 'colour'"),
    (["{tmp}/loose", "--shots", "2"], "--shots needs labelled images"),
    (["{tmp}/loose/x.png"], "cannot be read"),
    (["{tmp}/empty"], "holds no images"),
    (["{tmp}/loose", "--dataset-opt", "fit=squash"], "option fit must be one of"),
])
def test_bad_input_is_one_sentence(host, tmp_path, args, message):
    (tmp_path / "exists.jsonl").write_text("keep me\n")
    draw(tmp_path / "loose" / "fine.png", (8, 8, 30, 30))
    (tmp_path / "loose" / "x.png").write_bytes(b"no image")
    (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "c.jsonl")]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "c.jsonl").exists()
    assert (tmp_path / "exists.jsonl").read_text() == "keep me\n"
