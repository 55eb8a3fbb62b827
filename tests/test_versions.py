"""One version per distribution, written in its pyproject.toml and read from the installed
metadata; plugins name the imgxfer versions they work with, and the host skips one made
for other versions; CHANGELOG.md has a section for the current version. (The wheels
themselves are built and installed by tests/wheels/check_wheels.py, `make check-wheels`.)"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.plugin.host import PluginHost, PluginLoadWarning, incompatibility
from imgxfer.plugin.scaffold import imgxfer_requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["imgxfer-timm", "imgxfer-diffusers", "imgxfer-transformers"]


def project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def test_the_version_is_written_once_in_pyproject():
    version = project(ROOT)["version"]
    assert imgxfer.__version__ == md.version("imgxfer") == version
    result = CliRunner().invoke(cli, ["--version"])
    assert result.output.strip() == f"imgxfer, version {version}"
    # No other copy of a version number in the package's code.
    assert not [p for p in (ROOT / "src/imgxfer").rglob("*.py")
                if re.search(r"__version__\s*=\s*['\"]\d+\.\d+", p.read_text())]


@pytest.mark.parametrize("dist", PLUGINS)
def test_each_plugin_reads_its_version_and_declares_imgxfer_versions(dist):
    folder = ROOT / "plugins" / dist
    module = __import__(dist.replace("-", "_"))
    assert module.__version__ == md.version(dist) == project(folder)["version"]
    (needs,) = [Requirement(r) for r in project(folder)["dependencies"]
                if Requirement(r).name == "imgxfer"]
    assert needs.specifier.contains(imgxfer.__version__)
    assert any(s.operator == "<" for s in needs.specifier), "no upper bound"


def test_changelog_has_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert re.search(rf"^## \[{re.escape(imgxfer.__version__)}\] - \d{{4}}-\d\d-\d\d$", text,
                     re.MULTILINE)


@pytest.mark.parametrize("version, expected", [
    ("0.1.0", "imgxfer>=0.1,<0.2"), ("0.3.2", "imgxfer>=0.3,<0.4"), ("1.4.0", "imgxfer>=1.4,<2"),
    (imgxfer.UNKNOWN_VERSION, "imgxfer")])  # a source tree never installed: no range to give
def test_a_new_plugin_declares_the_versions_it_is_made_for(version, expected):
    assert imgxfer_requirement(version) == expected
    assert Requirement(imgxfer_requirement()).specifier.contains(imgxfer.__version__)


def dist(*requires, name="imgxfer-old", version="0.3.0"):
    return SimpleNamespace(requires=list(requires), version=version,
                           metadata={"Name": name})


@pytest.mark.parametrize("requires, fits", [
    ([], True),
    (["imgxfer"], True),
    (["imgxfer>=0.1,<0.2", "torch>=2.4"], True),
    (["imgxfer<0.1"], False),
    (["imgxfer_core>=9"], True),  # another distribution
    (["imgxfer>=9; extra == 'test'"], True),  # only for an extra
    (["imgxfer>=9; python_version < '3'"], True),
])
def test_incompatibility_reads_the_imgxfer_requirement(requires, fits):
    assert (incompatibility(dist(*requires), "0.1.0") is None) == fits


class EntryPoint:
    def __init__(self, name, dist):
        self.name, self.dist, self.value, self.loaded = name, dist, f"{name}_module", False

    def load(self):
        self.loaded = True
        raise AssertionError("an incompatible plugin must not be imported")


def test_a_plugin_made_for_other_imgxfer_versions_is_skipped(monkeypatch):
    ep = EntryPoint("old", dist("imgxfer<0.1", name="imgxfer-old", version="0.3.0"))
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep])
    with pytest.warns(PluginLoadWarning, match="plugin 'old' was skipped: it failed to load"):
        host = PluginHost({}).load_all()
    info = host.plugins["old"]
    assert not ep.loaded and info.status == "failed" and info.version == "0.3.0"
    assert info.error == (
        f"load: IncompatiblePlugin: imgxfer-old 0.3.0 needs imgxfer<0.1, and this is imgxfer "
        f"{imgxfer.__version__}; `pip install --upgrade imgxfer-old` may bring a version "
        "made for it")
    assert host.plugins["builtin"].status == "ok"


@pytest.mark.parametrize("dist_name", PLUGINS)
def test_the_installed_plugins_fit_this_imgxfer(dist_name):
    assert incompatibility(md.distribution(dist_name)) is None
