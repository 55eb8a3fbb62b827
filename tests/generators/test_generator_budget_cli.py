"""`imgxfer run --generator-budget DURATION` (old name --gan-budget): the generator's
training time from the CLI, and a time-only budget through a whole run."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from imgxfer import tasks
from imgxfer.cli.app import cli
from imgxfer.core.config import RunConfig


class _Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """Replaces the pipeline: records the config `imgxfer run` would run, runs nothing."""
    configs = []

    def fake_run(config, *args, **kwargs):
        configs.append(config)
        raise _Captured

    monkeypatch.setattr(tasks, "prepare", fake_run)
    return configs


def _run(*args):
    return CliRunner().invoke(cli, ["run", *args])


@pytest.mark.parametrize("flag", ["--generator-budget", "--gan-budget"])
def test_generator_budget_sets_the_time_and_lifts_the_step_cap(host, captured, flag) -> None:
    result = _run(flag, "3m")
    assert isinstance(result.exception, _Captured), result.output
    (config,) = captured
    assert config.generator_time == "3m" and config.generator_steps == 0


def test_generator_steps_still_cap_when_given(host, captured) -> None:
    result = _run("--generator-budget", "90s", "--generator-steps", "200")
    assert isinstance(result.exception, _Captured), result.output
    assert (captured[0].generator_time, captured[0].generator_steps) == ("90s", 200)


def test_generator_steps_from_the_config_file_still_cap(host, captured, tmp_path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text("generator_steps = 2000\n")
    result = _run("--config", str(config_file), "--gan-budget", "3m")
    assert isinstance(result.exception, _Captured), result.output
    assert (captured[0].generator_time, captured[0].generator_steps) == ("3m", 2000)


def test_without_gan_budget_nothing_changes(host, captured) -> None:
    _run()
    default = RunConfig()
    assert (captured[0].generator_time, captured[0].generator_steps) == (
        default.generator_time, default.generator_steps)


@pytest.mark.parametrize("args, words", [
    (["--gan-budget", "3x"], "cannot read the duration '3x'"),
    (["--gan-budget", "0s"], "must be positive"),
    (["--generator-budget", "3m", "--generator-time", "2m"], "give one of them"),
])
def test_bad_gan_budget_is_a_user_error(host, captured, args, words) -> None:
    result = _run(*args)
    assert result.exit_code == 2 and words in result.output and not captured, result.output


def test_a_time_only_budget_trains_for_that_time(host, tmp_path) -> None:
    """generator_steps = 0 with a time: Budget(steps=None), no step count stops it."""
    from conftest import TINY_RUN

    args = [a for a in TINY_RUN]
    args[args.index("--generator-steps") + 1] = "0"
    result = _run(*args, "--generator-time", "2s", "--no-quality", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    import json

    (folder,) = tmp_path.iterdir()
    assert json.loads((folder / "metrics.json").read_text())["generator"]["steps"] >= 1
    assert 'generator_steps = 0' in (folder / "config.toml").read_text()


def test_zero_generator_steps_without_a_time_is_refused(host, tmp_path) -> None:
    from conftest import TINY_RUN

    args = [a for a in TINY_RUN]
    args[args.index("--generator-steps") + 1] = "0"
    result = _run(*args, "--out", str(tmp_path))
    assert result.exit_code == 2 and "untrained" in result.output, result.output
