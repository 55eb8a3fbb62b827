"""`imgxfer plugin new`: the skeleton's files, its components loaded through the plugin
host (pluggy) and checked by the contract kit, and errors in one sentence. The slow test
pip-installs a skeleton, runs its own tests and uninstalls it."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import subprocess
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.data.dataset import ImageDataset
from imgxfer.plugin import scaffold, testing
from imgxfer.plugin.host import PluginHost

# Small options per kind, so the contract checks stay fast.
OPTIONS = {"encoder": {"width": 4, "input_size": 16}, "generator": {}, "adapter": {},
           "captioner": {}, "dataset": {"n_per_class": 4, "size": 16}}


@pytest.fixture
def load_skeleton(monkeypatch):
    """Import a written skeleton's package from its src/ folder; forgotten afterwards."""
    imported: list[str] = []

    def load(folder: Path, module: str):
        monkeypatch.syspath_prepend(str(folder / "src"))
        importlib.invalidate_caches()
        imported.append(module)
        return importlib.import_module(module)

    yield load
    for name in [m for m in sys.modules if m.split(".")[0] in imported]:
        del sys.modules[name]


def new(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli, ["plugin", "new", *args, "--out", str(tmp_path)])


@pytest.mark.parametrize("kind", scaffold.KINDS)
def test_new_plugin_of_every_kind_registers_a_working_component(host, tmp_path, kind,
                                                               load_skeleton):
    name = f"my-{kind}"
    result = new(tmp_path, name, "--kind", kind)
    assert result.exit_code == 0, result.output
    folder = tmp_path / f"imgxfer-{name}"
    module = f"imgxfer_my_{kind}"
    for rel in ("pyproject.toml", "README.md", ".gitignore", f"src/{module}/__init__.py",
                f"src/{module}/{kind}.py", f"src/{module}/py.typed", f"tests/test_my_{kind}.py"):
        assert (folder / rel).is_file(), rel
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"imgxfer-{name}"
    assert project["project"]["entry-points"]["imgxfer"] == {name: module}
    test_text = (folder / f"tests/test_my_{kind}.py").read_text()
    assert f"testing.check_{kind}(" in test_text and '["list", "--json"]' in test_text
    assert f"pip install -e '{folder}[test]'" in result.output
    assert f"python -m pytest {folder}/tests" in result.output

    # Registered through the hooks by a plugin host (a pluggy PluginManager), like an
    # installed entry point would be.
    plugin = load_skeleton(folder, module)
    loaded = PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    info = loaded.add(plugin, name)
    assert info.status == "ok", info.error
    assert info.components == {f"{kind}s": [name]}
    component = loaded.registry.get(f"{kind}s", name)
    built = loaded.registry.build(f"{kind}s", name, OPTIONS[kind])  # protocol members
    assert built is not None
    getattr(testing, f"check_{kind}")(component.factory, **OPTIONS[kind])


def test_several_kinds_in_one_plugin(host, tmp_path, load_skeleton):
    result = new(tmp_path, "combo", "--kind", "adapter", "--kind", "encoder")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "imgxfer-combo"
    assert {p.name for p in (folder / "src/imgxfer_combo").iterdir()} >= {
        "__init__.py", "adapter.py", "encoder.py"}
    info = PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all().add(
        load_skeleton(folder, "imgxfer_combo"), "combo")
    assert info.components == {"encoders": ["combo"], "adapters": ["combo"]}
    assert "imgxfer run --adapter combo --encoder combo" in result.output


@pytest.mark.parametrize("given, name, module", [
    ("My_Plugin", "my-plugin", "imgxfer_my_plugin"),
    ("imgxfer-shapes", "shapes", "imgxfer_shapes"),
    ("v2", "v2", "imgxfer_v2"),
])
def test_names_are_normalised(host, tmp_path, given, name, module):
    result = new(tmp_path, given)
    assert result.exit_code == 0, result.output
    project = tomllib.loads((tmp_path / f"imgxfer-{name}" / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["imgxfer"] == {name: module}
    assert (tmp_path / f"imgxfer-{name}" / "src" / module / "encoder.py").is_file()


@pytest.mark.parametrize("args, message", [
    (["9lives"], "plugin name '9lives' is not usable: give letters, digits and single "
                 "dashes, starting with a letter and at most 40 characters (e.g. my-encoder)."),
    (["a--b"], "plugin name 'a--b' is not usable"),
    (["bad name!"], "plugin name 'bad name!' is not usable"),
    (["builtin"], "plugin name 'builtin' is reserved by imgxfer; choose another name."),
    (["imgxfer"], "plugin name 'imgxfer' is reserved by imgxfer; choose another name."),
    (["timm"], "plugin name 'timm' is taken"),
    # Issue 29, item 15: words with a meaning on the command line.
    (["none", "--kind", "generator"], "plugin name 'none' is reserved: on imgxfer's command "
                                      "line 'none' means 'no component' (e.g. --generator none)"),
    (["Auto", "--kind", "adapter"], "plugin name 'Auto' is reserved: on imgxfer's command line "
                                    "'auto' means 'let imgxfer choose'"),
    (["probe", "--kind", "adapter"], "'probe' names the built-in scorer of --synthetic-filter-by"),
    (["smallcnn"], "encoder 'smallcnn' is already registered by plugin 'builtin', and the "
                   "new plugin registers its encoder under its own name; choose another name."),
    (["tiny-source", "--kind", "dataset"], "dataset 'tiny-source' is already registered by "
                                           "plugin 'fake'"),
    (["ok", "--kind", "bogus"], "Invalid value for '--kind'"),
])
def test_bad_names_are_one_sentence(host, tmp_path, args, message):
    result = new(tmp_path, *args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(host, tmp_path):
    (tmp_path / "imgxfer-mine").mkdir()
    (tmp_path / "imgxfer-mine" / "notes.txt").write_text("keep me")
    result = new(tmp_path, "mine")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: folder {str(tmp_path / 'imgxfer-mine')!r} "
                                     "already exists and is not empty; choose another name "
                                     "or --out folder.")
    assert [p.name for p in (tmp_path / "imgxfer-mine").iterdir()] == ["notes.txt"]
    (tmp_path / "imgxfer-mine" / "notes.txt").unlink()  # an empty folder is fine
    assert new(tmp_path, "mine").exit_code == 0


def test_out_must_be_a_folder(host, tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli, ["plugin", "new", "mine", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1


def test_help(host):
    for command in (["plugin"], ["plugin", "new"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--kind KIND" in result.output and "imgxfer plugin new my-encoder" in result.output


def test_library_call_without_the_cli(tmp_path):
    skeleton = scaffold.new_plugin("lib", ["captioner"], tmp_path / "deeper")
    assert skeleton.folder == tmp_path / "deeper" / "imgxfer-lib"
    assert Path("src/imgxfer_lib/captioner.py") in skeleton.files
    assert all((skeleton.folder / f).is_file() for f in skeleton.files)


@pytest.mark.slow
def test_skeleton_installs_passes_its_own_tests_and_uninstalls(tmp_path):
    """The flow a plugin author follows: plugin new, pip install -e, pytest, uninstall."""
    name = f"scaffold-check-{os.getpid()}"
    dist = f"imgxfer-{name}"
    skeleton = scaffold.new_plugin(name, ["encoder", "adapter"], tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMGXFER_LOAD_PLUGINS", "IMGXFER_STRICT_PLUGINS", "PYTEST_ADDOPTS")}

    def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)

    pip = run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
              "-q", "-e", str(skeleton.folder))
    assert pip.returncode == 0, pip.stdout + pip.stderr
    try:
        tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    cwd=skeleton.folder)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "5 passed" in tests.stdout
        removed = run(sys.executable, "-m", "imgxfer.cli.app", "uninstall", name)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert removed.stdout.strip() == f"uninstalled {dist} 0.1.0 (plugin {name})"
    finally:
        run(sys.executable, "-m", "pip", "uninstall", "--yes", "-q", dist)
    importlib.invalidate_caches()
    assert name not in {ep.name for ep in md.entry_points(group="imgxfer")}


class ColourPlugin:
    """A colour target: the fake plugin's inverted bars, tinted per channel."""

    @imgxfer.hookimpl
    def register_datasets(self, register):
        from conftest import tiny_bars

        def colour(n_per_class: int = 30, seed: int = 0):
            data = tiny_bars("tiny-colour", n_per_class, seed=seed + 7, invert=True)
            tint = torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)
            return ImageDataset(data.images.tensor() * tint, data.labels, data.class_names,
                                "tiny-colour")

        register("tiny-colour", colour)


def test_the_skeleton_encoder_follows_the_datas_channels(host, tmp_path, load_skeleton):
    """It hard-coded in_channels=1, so colour images were read as grey."""
    from imgxfer.core.config import from_mapping
    from imgxfer.tasks.classify.plan import prepare

    assert new(tmp_path, "my-backbone", "--kind", "encoder").exit_code == 0
    host.add(load_skeleton(tmp_path / "imgxfer-my-backbone", "imgxfer_my_backbone"),
             "my-backbone")
    host.add(ColourPlugin(), "colour")

    def plan(target: str):
        return prepare(from_mapping({
            "source": "tiny-source", "target": target, "shots": 3, "generator": "none",
            "encoder": {"name": "my-backbone", "width": 4, "input_size": 16},
            "out": str(tmp_path / "runs")}), host.registry)

    colour = plan("tiny-colour")
    assert colour.encoder.in_channels == 3
    assert tomllib.loads(colour.config.to_toml())["encoder"]["in_channels"] == 3
    assert plan("tiny-target").encoder.in_channels == 1
