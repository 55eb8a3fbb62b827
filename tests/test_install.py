"""`imgxfer install/uninstall`: resolution through registry.toml; pip is mocked only at
the subprocess boundary."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from imgxfer import install
from imgxfer.cli import cli


class Calls(list):
    """The commands given to subprocess.run; ``returncode`` is what pip "returns"."""

    returncode = 0


@pytest.fixture
def pip_calls(monkeypatch):
    calls = Calls()

    def fake_run(cmd, check=False, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, calls.returncode)

    monkeypatch.setattr(install.subprocess, "run", fake_run)
    return calls


def test_registry_lists_builtin_and_timm():
    known = install.known_plugins()
    assert known["builtin"].builtin and known["timm"].requirement == "imgxfer-timm"
    assert known["timm"].local_path() is not None  # tests run from a checkout


def test_unknown_name_refused_without_running_pip(pip_calls):
    result = CliRunner().invoke(cli, ["install", "rm -rf /; echo"])
    assert result.exit_code == 2
    assert "unknown plugin 'rm -rf /; echo'; known plugins: builtin, timm" in result.output
    assert pip_calls == []


def test_install_runs_pip_in_this_interpreter_with_a_list(pip_calls):
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 0, result.output
    (cmd,) = pip_calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert cmd[4].endswith("plugins/imgxfer-timm")  # local path from a checkout


def test_install_from_index_outside_a_checkout(pip_calls, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "CHECKOUT_ROOT", tmp_path)
    CliRunner().invoke(cli, ["install", "timm", "--upgrade"])
    assert pip_calls == [[sys.executable, "-m", "pip", "install", "--upgrade", "imgxfer-timm"]]


def test_pip_failure_is_one_sentence(pip_calls):
    pip_calls.returncode = 1
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: pip exited with status 1; its output is above."


def test_pip_failure_outside_a_checkout_names_the_plugin_folder(pip_calls, monkeypatch,
                                                                tmp_path):
    monkeypatch.setattr(install, "CHECKOUT_ROOT", tmp_path)
    pip_calls.returncode = 1
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: pip exited with status 1; its output is above (if the index has no "
        "'imgxfer-timm', install it from a checkout of imgxfer: pip install "
        "CHECKOUT/plugins/imgxfer-timm).")


def test_builtin_cannot_be_installed(pip_calls):
    result = CliRunner().invoke(cli, ["uninstall", "builtin"])
    assert result.exit_code == 2 and "built into imgxfer" in result.output and pip_calls == []


def test_uninstall_runs_pip(pip_calls, monkeypatch):
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: "0.1.0")
    result = CliRunner().invoke(cli, ["uninstall", "timm"])
    assert result.exit_code == 0, result.output
    assert pip_calls == [[sys.executable, "-m", "pip", "uninstall", "--yes", "imgxfer-timm"]]


def test_available_shows_directory():
    result = CliRunner().invoke(cli, ["plugins", "--available", "--json"])
    rows = {r["name"]: r for r in __import__("json").loads(result.stdout)}
    assert rows["builtin"]["installed"] and rows["timm"]["local_path"] == "plugins/imgxfer-timm"
