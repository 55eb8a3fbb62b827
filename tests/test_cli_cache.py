from __future__ import annotations

import torch
from click.testing import CliRunner
from conftest import TINY_RUN

from imgxfer.cli.app import cli
from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.data.features import encode


def write_two_cache_files(root, monkeypatch):
    """Point imgxfer's cache at ``root``, fill its feature cache with two encodings and
    return the feature cache's folder."""
    monkeypatch.setenv("IMGXFER_CACHE", str(root))
    encoder = SmallCNN(width=4, input_size=16, seed=0)
    for i in range(2):
        encode(encoder, torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(i)),
               "cpu", cache=True)
    return root / "features"


def test_cache_shows_and_clears_only_its_files(host, tmp_path, monkeypatch):
    folder = write_two_cache_files(tmp_path, monkeypatch)
    (folder / "keep.safetensors").write_bytes(b"not the cache's")
    result = CliRunner().invoke(cli, ["cache"])
    assert result.exit_code == 0, result.output
    assert f"folder: {folder}" in result.output and "files:  2 (" in result.output
    assert "limit 2.0 GB" in result.output

    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 0 and "removed 2 cached feature file(s)" in result.output
    assert [p.name for p in folder.iterdir()] == ["keep.safetensors"]
    assert "files:  0 (0 B;" in CliRunner().invoke(cli, ["cache"]).output


def test_cache_bad_limit(host, monkeypatch):
    monkeypatch.setenv("IMGXFER_CACHE_MAX_MB", "big")
    result = CliRunner().invoke(cli, ["cache"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: IMGXFER_CACHE_MAX_MB must be a size in megabytes "
                                     "(0 or more), got 'big'.")


def test_cache_clear_reports_files_it_cannot_remove(host, tmp_path, monkeypatch):
    folder = write_two_cache_files(tmp_path, monkeypatch)
    stuck = sorted(folder.iterdir())[0]
    real_unlink = type(stuck).unlink

    def unlink(self, missing_ok=False):
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(type(stuck), "unlink", unlink)
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 2
    assert result.output.startswith("error: removed 1 cached feature file(s) (")
    assert (f"from {folder}, but could not remove 1 (permission denied, e.g. {stuck.name}): "
            "is the folder writable?") in result.output
    assert [p for p in folder.iterdir()] == [stuck]


def test_cache_clear_of_a_read_only_cache_is_one_sentence(host, tmp_path, monkeypatch):
    """Issue 29, item 15: no file can be removed (a read-only folder; simulated, since
    root may write anywhere): one sentence, not a warning per file and a second error."""
    folder = write_two_cache_files(tmp_path, monkeypatch)

    def unlink(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(folder), "unlink", unlink)
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: removed 0 cached feature file(s)")
    assert "but could not remove 2 (permission denied, e.g. " in lines[0]
    assert len(list(folder.iterdir())) == 2


def test_cache_folder_that_is_a_file(host, tmp_path, monkeypatch):
    (tmp_path / "exists.csv").write_text("a,b\n")
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "exists.csv"))
    for args in (["cache"], ["cache", "--clear"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert "exists.csv' is a file; set IMGXFER_CACHE to a folder" in result.output
    assert (tmp_path / "exists.csv").read_text() == "a,b\n"

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "features").write_text("mine")
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "root"))
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 2
    assert "features' is a file; remove it or set IMGXFER_CACHE" in result.output
    assert (tmp_path / "root" / "features").read_text() == "mine"


def test_a_cache_folder_that_is_a_file_does_not_stop_encoding(tmp_path, monkeypatch):
    (tmp_path / "exists.csv").write_text("a,b\n")
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "exists.csv"))
    encoder = SmallCNN(width=4, input_size=16, seed=0)
    features = encode(encoder, torch.rand(3, 1, 16, 16), "cpu", cache=True)
    assert features.shape == (3, encoder.feature_dim)
    assert (tmp_path / "exists.csv").read_text() == "a,b\n"


def test_a_run_says_on_screen_that_its_cache_is_off(host, tmp_path, monkeypatch):
    (tmp_path / "exists.csv").write_text("a,b\n")
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "exists.csv"))
    result = CliRunner().invoke(cli, ["run", *TINY_RUN, "--generator", "none", "--adapter",
                                      "linear", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: feature cache off: the cache folder") == 1

