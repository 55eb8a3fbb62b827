"""imgxfer.plugin.provenance: a run records which plugin distribution built each component, and a
run whose plugin is gone says which distribution (and version) to install."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_protocols import SquareEncoder

import imgxfer
from imgxfer import __version__
from imgxfer.core.config import from_mapping, load
from imgxfer.core.errors import UnknownComponentError
from imgxfer.plugin.provenance import missing_plugin
from imgxfer.tasks.classify.plan import prepare

DIST = "imgxfer-my-backbone"  # no such distribution is installed


class BackbonePlugin:
    @imgxfer.hookimpl
    def register_encoders(self, register):
        register("my-backbone", SquareEncoder)


def _config(tmp_path, **extra):
    return from_mapping({"source": "tiny-source", "target": "tiny-target", "shots": 3,
                         "generator": "none", "adapter": "linear", "encoder_steps": 0,
                         "encoder": {"name": "my-backbone", "input_size": 12},
                         "out": str(tmp_path / "runs"), **extra})


@pytest.fixture
def backbone(host):
    """The fake host with plugin 'my-backbone' as if installed from distribution DIST."""
    host.add(BackbonePlugin(), "my-backbone", version="1.2.3", source="entry point",
             distribution=DIST)
    return host


def test_a_run_records_each_components_distribution_and_the_encoders_channels(
        backbone, tmp_path) -> None:
    plan = prepare(_config(tmp_path), backbone.registry)
    rows = {(r["kind"], r["name"]): r for r in plan.config.provenance}
    assert rows[("encoder", "my-backbone")] == {
        "kind": "encoder", "name": "my-backbone", "plugin": "my-backbone",
        "distribution": DIST, "version": "1.2.3", "in_channels": 1, "input_size": [12, 12]}
    assert rows[("adapter", "linear")] == {"kind": "adapter", "name": "linear",
                                          "plugin": "builtin", "distribution": "imgxfer",
                                          "version": __version__}
    assert rows[("dataset", "tiny-source")]["plugin"] == "fake"  # added from Python: no dist
    assert "distribution" not in rows[("dataset", "tiny-source")]
    # config.toml keeps it and reads it back (as `predict` and `--resume` do).
    (tmp_path / "config.toml").write_text(plan.config.to_toml())
    assert load(tmp_path / "config.toml").provenance == plan.config.provenance


@pytest.fixture
def finished_run(backbone, tmp_path):
    """A finished tiny run of the plugin's encoder; the plugin is then uninstalled."""
    from imgxfer.run.execute import execute

    folder = execute(prepare(_config(tmp_path), backbone.registry)).folder
    backbone.remove("my-backbone")
    return folder


NOT_INSTALLED = (f"unknown encoder 'my-backbone': the run needs the plugin distribution "
                 f"'{DIST}' (version 1.2.3), which is not installed; install it with "
                 f"`pip install {DIST}==1.2.3`.")


def test_predict_from_a_run_whose_plugin_is_gone_names_its_distribution(finished_run) -> None:
    from imgxfer.cli.app import cli

    result = CliRunner().invoke(cli, ["predict", "--from", str(finished_run),
                                      "tiny-target"])
    assert result.exit_code == 2, result.output
    assert NOT_INSTALLED in result.output and "Traceback" not in result.output


def test_resuming_a_run_whose_plugin_is_gone_names_its_distribution(finished_run,
                                                                    backbone) -> None:
    config = load(finished_run / "config.toml")
    with pytest.raises(UnknownComponentError) as caught:
        prepare(config, backbone.registry)
    assert str(caught.value) == NOT_INSTALLED


def test_a_known_plugin_is_installed_with_imgxfer_install(monkeypatch) -> None:
    from imgxfer.plugin import provenance

    monkeypatch.setattr(provenance, "_installed_version", lambda distribution: None)
    row = {"distribution": "imgxfer-timm", "version": "0.1.0"}
    assert missing_plugin("encoders", "timm/resnet18", row) == (
        "unknown encoder 'timm/resnet18': the run needs the plugin distribution "
        "'imgxfer-timm' (version 0.1.0), which is not installed; install it with "
        "`imgxfer install timm` (or `pip install imgxfer-timm==0.1.0`).")


def test_another_installed_version_is_named(monkeypatch) -> None:
    from imgxfer.plugin import provenance

    monkeypatch.setattr(provenance, "_installed_version", lambda distribution: "2.0")
    assert missing_plugin("adapters", "mine", {"distribution": "x-y", "version": "1.0"}) == (
        "unknown adapter 'mine': the run needs the plugin distribution 'x-y' (version 1.0), "
        "and version 2.0 is installed, which does not provide it; install the run's version "
        "with `pip install x-y==1.0`.")
    # The same version installed: it failed to load or was left out, which the
    # registry's own error says; built-ins and plugins added from Python name nothing.
    assert missing_plugin("adapters", "mine", {"distribution": "x-y", "version": "2.0"}) is None
    assert missing_plugin("adapters", "mine", {"distribution": "imgxfer", "version": "1"}) is None
    assert missing_plugin("adapters", "mine", {"plugin": "fake"}) is None
