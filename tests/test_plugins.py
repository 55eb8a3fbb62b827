"""Plugin loading: the fake plugin, failure isolation, duplicates, selection by env."""

from __future__ import annotations

import importlib.metadata as md
import json
import types

import pytest
import torch
from click.testing import CliRunner

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.core.errors import UnknownComponentError
from imgxfer.plugin import host as plugins
from imgxfer.plugin.host import PluginHost, PluginLoadWarning


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: a name and a load()."""

    def __init__(self, name, load):
        self.name, self._load, self.dist = name, load, None
        self.value = f"{name}_module"

    def load(self):
        return self._load()


def module_with(**hooks):
    module = types.ModuleType("fake_plugin_module")
    for name, fn in hooks.items():
        setattr(module, name, imgxfer.hookimpl(fn))
    return module


class _FakeEncoder(torch.nn.Module):
    """The members of imgxfer.plugin.protocols.Encoder, nothing more."""

    in_channels, input_size, weights_source = 1, (4, 4), "random"

    def __init__(self, width: int, model: str = "", weights: str | None = None) -> None:
        super().__init__()
        self.width = self.feature_dim = width
        self.model, self.weights_source = model, weights or "random"

    def preprocess(self, images):
        return images[:, :1]

    def forward(self, x):
        return x.flatten(1)[:, :self.feature_dim]


def good_plugin():
    def register_encoders(register):
        register("fake-enc", lambda width=2: _FakeEncoder(width), description="a fake encoder")
    return module_with(register_encoders=register_encoders)


def import_error():
    raise ImportError("No module named 'missing_dependency'")


def register_error_plugin():
    def register_datasets(register):
        register("half-registered", lambda: None)
        raise RuntimeError("registration blew up")
    return module_with(register_datasets=register_datasets)


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points with a chosen list."""
    def use(*eps):
        monkeypatch.setattr(md, "entry_points", lambda group=None: list(eps))
    return use


def test_builtin_components_registered_through_hooks():
    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    assert host.plugins["builtin"].status == "ok"
    assert host.registry.get("encoders", "smallcnn").plugin == "builtin"
    for kind, name in [("datasets", "syndigits"), ("datasets", "digits"), ("captioners", "template"),
                       ("generators", "gan"), ("adapters", "finetune")]:
        assert name in host.registry.names(kind)


def test_fake_plugin_fixture_components(host):
    ds = host.registry.build("datasets", "tiny-target", {"n_per_class": 4})
    assert len(ds) == 12 and ds.class_names == ["horizontal", "vertical", "dot"]
    assert host.plugins["fake"].components == {"datasets": [
        "tiny-scenes", "tiny-scenes-inverted", "tiny-source", "tiny-target"]}


def test_entry_point_plugin_loaded(entry_points):
    entry_points(FakeEntryPoint("good", good_plugin))
    host = PluginHost({}).load_all()
    assert host.registry.build("encoders", "fake-enc", {"width": 3}).width == 3
    assert host.plugins["good"].source == "entry point"


def test_import_error_is_isolated(entry_points):
    entry_points(FakeEntryPoint("broken", import_error), FakeEntryPoint("good", good_plugin))
    with pytest.warns(PluginLoadWarning, match=r"plugin 'broken' was skipped: it failed to import \(ImportError"):
        host = PluginHost({}).load_all()
    assert host.plugins["broken"].status == "failed"
    assert "missing_dependency" in host.plugins["broken"].error
    assert host.plugins["good"].status == "ok"  # one bad plugin does not stop the others


def test_register_error_rolls_back(entry_points):
    entry_points(FakeEntryPoint("halfway", register_error_plugin))
    with pytest.warns(PluginLoadWarning, match="registration blew up"):
        host = PluginHost({}).load_all()
    assert "half-registered" not in host.registry.names("datasets")
    assert host.plugins["halfway"].status == "failed"
    assert host.pm.get_plugin("halfway") is None


def test_strict_mode_raises(entry_points):
    entry_points(FakeEntryPoint("broken", import_error))
    with pytest.raises(RuntimeError, match="plugin 'broken' failed to import"):
        PluginHost({"IMGXFER_STRICT_PLUGINS": "1"}).load_all()


def test_duplicate_name_names_both_plugins():
    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""})
    host.add(good_plugin(), "first")
    with pytest.warns(PluginLoadWarning, match="registered by both plugin 'first' and plugin 'second'"):
        info = host.add(good_plugin(), "second")
    assert info.status == "failed"
    assert host.registry.get("encoders", "fake-enc").plugin == "first"


def test_duplicate_name_raises_in_strict_mode():
    host = PluginHost({"IMGXFER_STRICT_PLUGINS": "1"})
    host.add(good_plugin(), "first")
    with pytest.raises(RuntimeError, match="registered by both plugin 'first' and plugin 'second'"):
        host.add(good_plugin(), "second")


@pytest.mark.parametrize("value, loaded", [(None, {"a", "b"}), ("", set()), ("b", {"b"}), (" a , b ", {"a", "b"})])
def test_load_plugins_selection(entry_points, value, loaded):
    entry_points(FakeEntryPoint("a", lambda: module_with()), FakeEntryPoint("b", lambda: module_with()))
    env = {} if value is None else {"IMGXFER_LOAD_PLUGINS": value}
    host = PluginHost(env).load_all()
    assert set(host.plugins) - {"builtin"} == loaded


def test_same_entry_point_twice_and_reserved_name(entry_points):
    entry_points(FakeEntryPoint("builtin", good_plugin), FakeEntryPoint("good", good_plugin),
                 FakeEntryPoint("good", good_plugin))
    with pytest.warns(PluginLoadWarning, match="a plugin of that name is already loaded"):
        host = PluginHost({}).load_all()
    assert host.load_all() is host  # loading again changes nothing
    assert {n: p.status for n, p in host.plugins.items()} == {"builtin": "ok", "good": "ok"}
    assert host.registry.get("encoders", "fake-enc").plugin == "good"


def test_load_plugins_unknown_name_warns(entry_points):
    entry_points(FakeEntryPoint("a", lambda: module_with()))
    with pytest.warns(PluginLoadWarning, match="names 'nope', which is not an installed plugin"):
        PluginHost({"IMGXFER_LOAD_PLUGINS": "a,nope"}).load_all()


def test_unknown_component_message_lists_names(host):
    with pytest.raises(UnknownComponentError) as info:
        host.registry.get("encoders", "resnet999")
    message = str(info.value)
    assert isinstance(info.value, KeyError)
    assert "unknown encoder 'resnet999'" in message and "smallcnn" in message
    assert "imgxfer plugins" in message


def test_a_folder_given_as_a_dataset_name_points_to_folder(host, tmp_path):
    """A new user's `--target my_images/`: the fix (folder:PATH) in one sentence."""
    with pytest.raises(UnknownComponentError) as info:
        host.registry.get("datasets", str(tmp_path))
    assert str(info.value) == (f"{str(tmp_path)!r} is a folder, not a dataset name; give it "
                               f"as folder:{tmp_path} (one sub-folder of images per class).")


def test_family_names_pass_the_rest_to_the_factory():
    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""})
    host.add(module_with(register_encoders=lambda register: register(
        "fam/", lambda model, size=1: _FakeEncoder(size, model))), "fam")
    built = host.registry.build("encoders", "fam/resnet18", {"size": 2})
    assert (built.model, built.width) == ("resnet18", 2)


def test_family_factory_with_positional_only_name():
    def make(model, /, *, pretrained=None):
        return _FakeEncoder(1, model, pretrained)

    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""})
    host.add(module_with(register_encoders=lambda register: register("fam/", make)), "fam")
    assert host.registry.get("encoders", "fam/x").options() == ["pretrained"]
    built = host.registry.build("encoders", "fam/x", {"pretrained": "imagenet"})
    assert (built.model, built.weights_source) == ("x", "imagenet")


def test_option_of_the_wrong_type_is_refused(host):
    from imgxfer.core.errors import UserError

    with pytest.raises(UserError, match="encoder 'smallcnn': option width must be int, got 'wide'"):
        host.registry.build("encoders", "smallcnn", {"width": "wide"})
    host.registry.build("adapters", "finetune", {"lr": 1})  # an int where a float is expected is fine


def test_unknown_option_is_refused(host):
    from imgxfer.core.errors import UserError

    with pytest.raises(UserError, match="encoder 'smallcnn' has no option 'depth'; valid options: width"):
        host.registry.build("encoders", "smallcnn", {"depth": 3})


def test_non_finite_options_are_refused_by_name(host):
    from imgxfer.core.errors import UserError

    with pytest.raises(UserError, match=r"^encoder 'smallcnn': option lr must be a finite "
                                        r"number, got nan\.$"):
        host.registry.build("encoders", "smallcnn", {"lr": float("nan")})
    host.add(module_with(register_encoders=lambda register: register(
        "any-opts", lambda **opts: _FakeEncoder(2))), "anyopts")
    with pytest.raises(UserError, match="option betas must be a finite number"):
        host.registry.build("encoders", "any-opts", {"betas": [0.5, float("inf")]})


def test_strict_mode_is_one_sentence_and_keeps_builtin_commands(entry_points, monkeypatch):
    """IMGXFER_STRICT_PLUGINS=1 with a broken plugin: every command that loads plugins
    ends in one sentence naming it, and built-in commands such as predict stay."""
    import imgxfer.cli.app as cli_module

    entry_points(FakeEntryPoint("broken", import_error))
    monkeypatch.setenv("IMGXFER_STRICT_PLUGINS", "1")
    monkeypatch.delenv("IMGXFER_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins, "_HOST", None)
    core = {n: c for n, c in cli_module.cli.commands.items() if n in cli_module.BUILTIN_COMMANDS}
    sentence = ("error: plugin 'broken' failed to import (ImportError: No module named "
                "'missing_dependency'); fix or uninstall it (imgxfer uninstall broken), or "
                "unset IMGXFER_STRICT_PLUGINS to skip it.")
    for args in (["list"], ["run", "--shots", "3"], ["predict", "x.png", "--from", "run"],
                 ["frobnicate"]):
        group = cli_module.ImgxferGroup(name="imgxfer", commands=dict(core))
        result = CliRunner().invoke(group, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip() == sentence, (args, result.output)
    group = cli_module.ImgxferGroup(name="imgxfer", commands=dict(core))
    result = CliRunner().invoke(group, ["predict", "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output  # still a command


def test_tables_never_split_names_or_options_at_80_columns(host):
    """rich folds a cell in the middle of a word; imgxfer's tables wrap at spaces."""
    result = CliRunner().invoke(cli, ["list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [cell.strip() for line in lines for cell in line.split("│")]
    for whole in ("mobilenet_v3_large", "encoder_lr_scale=0.3,", 'pretrained="none",',
                  "in_channels=0,", "(timm/<model_name>)", "checkpoint_every=250,"):
        if whole.startswith("(timm") and "timm" not in host.plugins:
            continue
        assert any(whole in cell.split() for cell in cells), whole
    result = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "80"})
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert any("mobilenet_v3_large," in line.split() for line in result.output.splitlines())


def test_plugins_command_shows_failed_plugin(entry_points, monkeypatch):
    entry_points(FakeEntryPoint("broken", import_error), FakeEntryPoint("good", good_plugin))
    monkeypatch.setenv("IMGXFER_STRICT_PLUGINS", "1")  # must not stop `imgxfer plugins`
    monkeypatch.delenv("IMGXFER_LOAD_PLUGINS", raising=False)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["broken"]["status"] == "failed" and "ImportError" in rows["broken"]["error"]
    assert rows["good"]["components"] == {"encoders": ["fake-enc"]}
    assert rows["builtin"]["source"] == "built-in"
    table = CliRunner().invoke(cli, ["plugins"])
    assert "failed" in table.output and "builtin" in table.output


def test_plugin_commands_are_added(monkeypatch):
    import click

    @click.command("hello")
    def hello():
        click.echo("hello from a plugin")

    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(module_with(register_commands=lambda cli: cli.add_command(hello)), "greeter")
    monkeypatch.setattr(plugins, "_HOST", host)
    import imgxfer.cli.app as cli_module

    group = cli_module.ImgxferGroup(name="imgxfer", commands=dict(cli_module.cli.commands))
    result = CliRunner().invoke(group, ["hello"])
    assert result.output.strip() == "hello from a plugin"
    assert host.plugins["greeter"].components == {"commands": ["hello"]}  # `imgxfer plugins` shows it


def test_a_plugin_cannot_replace_another_command(monkeypatch):
    import click

    @click.command("run")
    def hijack():
        click.echo("not the real run")

    host = PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(module_with(register_commands=lambda cli: cli.add_command(hijack)), "hijacker")
    import imgxfer.cli.app as cli_module

    group = cli_module.ImgxferGroup(name="imgxfer", commands=dict(cli_module.cli.commands))
    with pytest.warns(plugins.PluginLoadWarning, match="command 'run' is already provided"):
        host.add_commands(group)
    assert group.commands["run"] is cli_module.cli.commands["run"]
    assert host.plugins["hijacker"].status == "failed"


def test_list_command(host):
    result = CliRunner().invoke(cli, ["list", "datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    names = {r["name"]: r for r in rows}
    assert {"syndigits", "digits", "tiny-source"} <= set(names)
    assert names["tiny-source"]["plugin"] == "fake"
    assert "n_per_class" in names["syndigits"]["options"]
    assert names["tiny-source"]["defaults"] == {"n_per_class": 30, "seed": 0}
    table = CliRunner().invoke(cli, ["list", "datasets"], env={"COLUMNS": "200"}).output
    assert "n_per_class=30, seed=from --seed" in table  # options with their defaults
    assert "seed=0" not in table  # a run passes its own seed (issue 29, item 10)


# Click words the messages itself (and differently across versions): match the parts.
@pytest.mark.parametrize("args, words", [
    (["list", "widgets"], ("'widgets'", "See 'imgxfer list --help'.")),
    (["run", "--shots", "abc"], ("'abc'", "See 'imgxfer run --help'.")),
    (["run", "extra"], ("extra", "See 'imgxfer run --help'.")),
    (["frobnicate"], ("frobnicate", "See 'imgxfer --help'.")),
    (["--bogus"], ("--bogus", "See 'imgxfer --help'.")),
])
def test_usage_errors_are_one_line(args, words):
    result = CliRunner().invoke(cli, args, prog_name="imgxfer")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(w in lines[0] for w in words) and ". See" in lines[0]


def test_no_arguments_show_the_help():
    result = CliRunner().invoke(cli, [], prog_name="imgxfer")
    assert "Usage: imgxfer" in result.output and "error:" not in result.output
