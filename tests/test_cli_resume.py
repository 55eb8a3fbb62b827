"""`imgxfer run --resume`: an interrupted run finishes in its own folder, the generator
continuing from its last training checkpoint, with the same result as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RUN, FakePlugin
from safetensors.torch import load_file

from imgxfer.cli.app import cli
from imgxfer.components.generators import gan as gan_module
from imgxfer.plugin import host as plugins

RUN = [*TINY_RUN[:TINY_RUN.index("--generator-steps")], "--generator-steps", "6",
       *TINY_RUN[TINY_RUN.index("--generator-steps") + 2:],
       "--generator-opt", "checkpoint_every=2", "--no-quality"]


class Crash(Exception):
    pass


@pytest.fixture
def host():
    host = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(FakePlugin(), "fake")
    plugins._HOST = host
    yield host
    plugins.reset_host()


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *args])


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(host, tmp_path, monkeypatch):
    whole = invoke(*RUN, "--out", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    (whole_folder,) = (tmp_path / "whole").iterdir()

    real_save = gan_module.ConditionalGAN._save_training

    def crash_after_step_4(self, path, state):
        real_save(self, path, state)
        if state.step == 4:
            raise Crash  # the machine goes down right after the step-4 checkpoint

    monkeypatch.setattr(gan_module.ConditionalGAN, "_save_training", crash_after_step_4)
    crashed = invoke(*RUN, "--out", str(tmp_path / "runs"))
    assert isinstance(crashed.exception, Crash)
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "generator-train.safetensors").is_file()
    assert not (folder / "metrics.json").exists()
    monkeypatch.undo()

    resumed = invoke("--resume", str(folder))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output
    assert not (folder / "generator-train.safetensors").exists()  # finished: removed
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["generator"]["steps"] == 6
    a, b = load_file(folder / "generator.safetensors"), load_file(whole_folder / "generator.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected = json.loads((whole_folder / "metrics.json").read_text())
    assert metrics["target"]["accuracy"] == expected["target"]["accuracy"]


def test_resume_refusals(host, tmp_path):
    result = invoke("--resume", str(tmp_path / "nowhere"))
    assert result.exit_code != 0 and "is not a folder" in result.output
    (tmp_path / "a-file").write_text("")
    result = invoke("--resume", str(tmp_path / "a-file"))
    assert result.exit_code == 2 and "a-file' is not a folder." in result.output
    assert "Usage:" not in result.output
    (tmp_path / "a-file").unlink()
    result = invoke("--resume", str(tmp_path))
    assert result.exit_code != 0 and "not a run folder" in result.output
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "metrics.json").write_text("{}")
    result = invoke("--resume", str(tmp_path))
    assert result.exit_code != 0 and "already finished" in result.output
    assert (tmp_path / "metrics.json").read_text() == "{}"  # untouched
    result = invoke("--resume", str(tmp_path), "--shots", "3")
    assert result.exit_code != 0 and "give no other run options" in result.output
    assert "Traceback" not in result.output


def test_resume_refuses_a_folder_of_another_config(host, tmp_path):
    from imgxfer.core.config import RunConfig
    from imgxfer.core.errors import UserError
    from imgxfer.run.execute import execute
    from imgxfer.tasks.classify.plan import prepare

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.toml").write_text(RunConfig(shots=5).to_toml())
    with pytest.raises(UserError, match="holds a run of another config"):
        execute(prepare(RunConfig(source="tiny-source", target="tiny-target", shots=3,
                                  out=str(tmp_path)), host.registry), folder=folder, resume=True)
    assert (folder / "config.toml").read_text() == RunConfig(shots=5).to_toml()


def test_a_folder_interrupted_before_synthesis_and_auto_channels_resumes(host, tmp_path,
                                                                         monkeypatch):
    """A run interrupted by an older imgxfer: its config.toml has no ``synthesis`` (then
    text, not today's auto) and no resolved ``in_channels``, its GAN checkpoint no
    ``content_weight``."""
    from safetensors.torch import save_file

    def crash_after_step_4(self, path, state):
        real_save(self, path, state)
        if state.step == 4:
            raise Crash

    real_save = gan_module.ConditionalGAN._save_training
    monkeypatch.setattr(gan_module.ConditionalGAN, "_save_training", crash_after_step_4)
    assert isinstance(invoke(*RUN, "--synthesis", "text", "--out", str(tmp_path)).exception,
                      Crash)
    monkeypatch.undo()
    (folder,) = tmp_path.iterdir()
    config = (folder / "config.toml").read_text()
    assert "in_channels = 1" in config and 'synthesis = "text"' in config
    (folder / "config.toml").write_text(config.replace("in_channels = 1\n", "")
                                        .replace('synthesis = "text"\n', ""))
    checkpoint = folder / "generator-train.safetensors"
    from safetensors import safe_open
    with safe_open(checkpoint, "pt") as f:
        meta = f.metadata()
    options = json.loads(meta["options"])
    del options["content_weight"]
    save_file(load_file(checkpoint), checkpoint, {**meta, "options": json.dumps(options)})
    resumed = invoke("--resume", str(folder))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output


def test_a_run_that_stops_says_so_once_with_the_resume_command(host, tmp_path, monkeypatch):
    """Issue 29, item 3: a user error in the middle of a run is one sentence that ends with
    the command that continues it (not a warning and then the same error again)."""
    from imgxfer.core.errors import UserError
    from imgxfer.tasks.classify.stages import adapt

    def full_disk(*args, **kwargs):
        raise UserError("the disk is full.")

    monkeypatch.setattr(adapt, "fit_adapter", full_disk)
    result = invoke(*RUN, "--generator", "none", "--out", str(tmp_path))
    (folder,) = tmp_path.iterdir()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("the disk is full") == 1 and "warning" not in result.output
    assert f"continue it with imgxfer run --resume {folder}" in " ".join(result.output.split())
    assert json.loads((folder / "failed.json").read_text())["message"] == "the disk is full."
