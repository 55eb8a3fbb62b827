"""`imgxfer install/uninstall`: resolution through registry.toml and the installed entry
points, pip's quiet run and its summary, and the hint for a plugin that is not loaded.
pip is mocked only at the subprocess boundary; installed distributions are stand-ins."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from imgxfer.cli.app import cli
from imgxfer.core.errors import UnknownComponentError
from imgxfer.plugin import install
from imgxfer.plugin.host import PluginInfo
from imgxfer.plugin.install import InstalledPlugin

# What pip printed when a plugin's build failed (recorded from pip 25 on Python 3.11).
BUILD_FAILURE = """\
Processing ./broken
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Getting requirements to build wheel: started
  Getting requirements to build wheel: finished with status 'error'
  error: subprocess-exited-with-error

  × Getting requirements to build wheel did not run successfully.
  │ exit code: 1
  ╰─> [1 lines of output]
      setup.py says: broken on purpose
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
error: subprocess-exited-with-error

× Getting requirements to build wheel did not run successfully.
│ exit code: 1
╰─> See above for output.

note: This error originates from a subprocess, and is likely not a problem with pip.
"""
NOT_ON_INDEX = """\
Looking in indexes: https://pypi.org/simple
ERROR: Could not find a version that satisfies the requirement imgxfer-timm (from versions: none)
ERROR: No matching distribution found for imgxfer-timm

[notice] A new release of pip is available: 25.0 -> 25.1
"""


class Calls(list):
    """The commands given to subprocess.run; pip "returns" ``returncode`` and prints
    ``stdout``/``stderr``."""

    returncode = 0
    stdout = ""
    stderr = ""


@pytest.fixture
def pip_calls(monkeypatch):
    calls = Calls()

    def fake_run(cmd, check=False, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, calls.returncode, calls.stdout, calls.stderr)

    monkeypatch.setattr(install.subprocess, "run", fake_run)
    return calls


@pytest.fixture
def world(monkeypatch):
    """What is installed, as install.py sees it: ``world.installed`` (distribution ->
    InstalledPlugin), ``world.version`` (what md.version says of the plugin before pip
    runs) and ``world.probed`` (what a fresh interpreter loads afterwards)."""
    state = SimpleNamespace(installed={}, version=None, probed=None, probe_calls=[])
    monkeypatch.setattr(install, "installed_plugins", lambda: {
        install.normalise_name(k): v for k, v in state.installed.items()})
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: state.version)

    def probe(entry_points):
        state.probe_calls.append(entry_points)
        if state.probed is not None:
            return state.probed
        return [{"name": n, "status": "ok", "error": "",
                 "components": {"encoders": ["timm/"]}} for n in entry_points]

    monkeypatch.setattr(install, "probe_plugins", probe)
    return state


def test_registry_lists_builtin_and_timm():
    known = install.known_plugins()
    assert known["builtin"].builtin and known["timm"].requirement == "imgxfer-timm"
    assert known["timm"].local_path() is not None  # tests run from a checkout


def test_unknown_name_refused_without_running_pip(pip_calls):
    result = CliRunner().invoke(cli, ["install", "rm -rf /; echo"])
    assert result.exit_code == 2
    known = ", ".join(sorted(install.known_plugins()))
    assert result.output.strip() == (f"error: unknown plugin 'rm -rf /; echo'; known plugins: "
                                     f"{known} (see `imgxfer plugins --available`).")
    assert "builtin" in known and "timm" in known
    assert pip_calls == []


# -- install ---------------------------------------------------------------------------
def test_install_runs_pip_quietly_and_summarises(pip_calls, world):
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.1.0", ["timm"])}
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 0, result.output
    (cmd,) = pip_calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert cmd[4].endswith("plugins/imgxfer-timm")  # local path from a checkout
    assert "--no-input" in cmd
    lines = result.stdout.splitlines()
    assert lines[0] == f"installed imgxfer-timm 0.1.0 (from {cmd[4]})"
    assert lines[1:] == ["plugin 'timm': encoders timm/<...>",
                         "ready: the next imgxfer command loads it (no restart needed)."]
    assert world.probe_calls == [["timm"]]


def test_install_adds_the_extras_registry_toml_names(pip_calls, world):
    assert install.known_plugins()["diffusers"].extras == ["sd"]
    world.installed = {"imgxfer-diffusers": InstalledPlugin("imgxfer-diffusers", "0.1.0",
                                                            ["diffusers"])}
    result = CliRunner().invoke(cli, ["install", "diffusers"])
    assert result.exit_code == 0, result.output
    assert pip_calls[0][4].endswith("plugins/imgxfer-diffusers[sd]")


def test_install_from_index_outside_a_checkout(pip_calls, world, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "CHECKOUT_ROOT", tmp_path)
    world.version = "0.1.0"
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.2.0", ["timm"])}
    result = CliRunner().invoke(cli, ["install", "timm", "--upgrade"])
    assert pip_calls[0][:6] == [sys.executable, "-m", "pip", "install", "--upgrade",
                                "imgxfer-timm"]
    assert result.stdout.splitlines()[0] == (
        "upgraded imgxfer-timm 0.1.0 -> 0.2.0 (from imgxfer-timm)")


def test_install_again_says_so(pip_calls, world):
    world.version = "0.1.0"
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.1.0", ["timm"])}
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.stdout.splitlines()[0] == "imgxfer-timm 0.1.0 is installed (it was already)"


def test_install_warns_when_the_plugin_fails_to_load(pip_calls, world):
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.1.0", ["timm"])}
    world.probed = [{"name": "timm", "status": "failed", "components": {},
                     "error": "import: ModuleNotFoundError: No module named 'timm'"}]
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 0
    assert result.stderr.strip() == (
        "warning: plugin 'timm' fails to load (import: ModuleNotFoundError: No module "
        "named 'timm'); `imgxfer plugins` shows it.")
    assert "no restart needed" not in result.stdout


def test_install_of_a_distribution_without_entry_point_warns(pip_calls, world, monkeypatch):
    monkeypatch.setattr(install, "_entry_points_of", lambda dist: None)
    world.version = None
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 0
    assert "warning: pip installed" in result.stderr


def test_pip_failure_shows_its_error_lines(pip_calls, world, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "CHECKOUT_ROOT", tmp_path)
    pip_calls.returncode, pip_calls.stderr = 1, NOT_ON_INDEX
    result = CliRunner().invoke(cli, ["install", "timm"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: pip could not install imgxfer-timm (exit status 1) (if the index has no "
        "'imgxfer-timm', give a folder of its wheel with --find-links DIR, or install it "
        "from a checkout of imgxfer: pip install CHECKOUT/plugins/imgxfer-timm):",
        "  ERROR: Could not find a version that satisfies the requirement imgxfer-timm "
        "(from versions: none)",
        "  ERROR: No matching distribution found for imgxfer-timm",
    ]
    assert world.probe_calls == []


# -- where install takes a plugin from: a wheel folder, an index, the checkout ----------
@pytest.fixture
def no_source_variables(monkeypatch):
    for name in (install.WHEELS_ENV, install.INDEX_ENV):
        monkeypatch.delenv(name, raising=False)


def wheel_folder(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_install_from_a_wheel_folder_takes_its_newest_installable_wheel(
        pip_calls, world, tmp_path, no_source_variables):
    """The wheel file itself goes to pip (a newer release on an index cannot replace
    it), and the folder serves its dependencies; from a checkout too."""
    folder = wheel_folder(tmp_path / "dist", "imgxfer_timm-0.1.0-py3-none-any.whl",
                          "imgxfer_timm-0.2.0-py3-none-any.whl",
                          "imgxfer_timm-0.3.0-cp27-cp27m-win32.whl",  # not for this Python
                          "imgxfer_diffusers-9.0.0-py3-none-any.whl", "not-a-wheel.whl",
                          "imgxfer_timm-0.4.0.tar.gz")
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.2.0", ["timm"])}
    result = CliRunner().invoke(cli, ["install", "timm", "--find-links", str(folder)])
    assert result.exit_code == 0, result.output
    wheel = folder / "imgxfer_timm-0.2.0-py3-none-any.whl"
    assert pip_calls[0][3:7] == ["install", "--find-links", str(folder), str(wheel)]
    assert result.stdout.splitlines()[0] == f"installed imgxfer-timm 0.2.0 (from {wheel})"


def test_the_wheel_folder_variable_and_extras(pip_calls, world, tmp_path, monkeypatch,
                                              no_source_variables):
    folder = wheel_folder(tmp_path / "wheels", "imgxfer_diffusers-0.1.0-py3-none-any.whl")
    monkeypatch.setenv(install.WHEELS_ENV, str(folder))
    world.installed = {"imgxfer-diffusers": InstalledPlugin("imgxfer-diffusers", "0.1.0",
                                                            ["diffusers"])}
    result = CliRunner().invoke(cli, ["install", "diffusers"])
    assert result.exit_code == 0, result.output
    assert pip_calls[0][6] == f"{folder}/imgxfer_diffusers-0.1.0-py3-none-any.whl[sd]"
    # The option wins over the variable.
    other = wheel_folder(tmp_path / "other", "imgxfer_diffusers-0.2.0-py3-none-any.whl")
    CliRunner().invoke(cli, ["install", "diffusers", "--find-links", str(other)])
    assert pip_calls[1][6] == f"{other}/imgxfer_diffusers-0.2.0-py3-none-any.whl[sd]"


def test_install_from_an_index(pip_calls, world, monkeypatch, no_source_variables):
    world.installed = {"imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.1.0", ["timm"])}
    url = "https://pypi.example.org/simple"
    result = CliRunner().invoke(cli, ["install", "timm", "--index-url", url])
    assert result.exit_code == 0, result.output
    assert pip_calls[0][3:7] == ["install", "--index-url", url, "imgxfer-timm"]
    assert result.stdout.splitlines()[0] == (
        f"installed imgxfer-timm 0.1.0 (from imgxfer-timm at {url})")
    monkeypatch.setenv(install.INDEX_ENV, "file:///srv/simple")
    CliRunner().invoke(cli, ["install", "timm"])
    assert pip_calls[1][3:7] == ["install", "--index-url", "file:///srv/simple", "imgxfer-timm"]


@pytest.mark.parametrize("url", ["notaurl", "ftp://example.org/simple"])
def test_an_index_url_that_is_not_one_is_one_sentence(pip_calls, url, no_source_variables):
    result = CliRunner().invoke(cli, ["install", "timm", "--index-url", url])
    assert result.exit_code == 2 and pip_calls == []
    assert result.output.strip() == (
        f"error: --index-url (IMGXFER_PLUGIN_INDEX) takes a package index: an address "
        f"(https://..., file:///...) or a folder laid out as one, not {url!r}; give a "
        "folder of wheels with --find-links.")


def test_an_index_url_may_be_a_folder_laid_out_as_an_index(pip_calls, tmp_path,
                                                           no_source_variables):
    (tmp_path / "simple" / "imgxfer-timm").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["install", "timm", "--index-url",
                                      str(tmp_path / "simple")])
    assert result.exit_code == 0, result.output
    uri = (tmp_path / "simple").as_uri()
    assert pip_calls[0][3:7] == ["install", "--index-url", uri, "imgxfer-timm"]


@pytest.mark.parametrize("given, message", [
    ("missing", "error: the wheel folder '{tmp}/missing' (--find-links or "
                "IMGXFER_PLUGIN_WHEELS) is not a folder."),
    ("empty", "error: the wheel folder '{tmp}/empty' holds no wheel of imgxfer-timm that "
              "this Python can install; build one with `python -m build --outdir DIR "
              "PLUGIN_FOLDER` (in a checkout: `make wheels`)."),
    ("https://example.org/wheels", "error: --find-links (IMGXFER_PLUGIN_WHEELS) takes a "
     "folder of wheels on this machine, not 'https://example.org/wheels'; give a package "
     "index with --index-url."),
])
def test_a_wheel_folder_without_the_plugin_is_one_sentence(pip_calls, tmp_path, given,
                                                           message, no_source_variables):
    wheel_folder(tmp_path / "empty", "imgxfer_diffusers-0.1.0-py3-none-any.whl")
    folder = given if "://" in given else str(tmp_path / given)
    result = CliRunner().invoke(cli, ["install", "timm", "--find-links", folder])
    assert result.exit_code == 2 and pip_calls == []
    assert result.output.strip() == message.format(tmp=tmp_path)


def test_install_help_names_the_sources_and_their_variables():
    shown = " ".join(CliRunner().invoke(cli, ["install", "--help"]).output.split())
    for words in ("--find-links DIR", "--index-url URL", "$IMGXFER_PLUGIN_WHEELS",
                  "$IMGXFER_PLUGIN_INDEX", "imgxfer install timm --find-links dist"):
        assert words in shown


def test_an_installed_wheel_is_no_checkout(monkeypatch, tmp_path):
    """From site-packages there is no local `path` to install (whatever lies two folders
    up); from ROOT/src/imgxfer with ROOT/pyproject.toml there is."""
    timm = install.known_plugins()["timm"]
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setattr(install, "PACKAGE_DIR", tmp_path / "site-packages" / "imgxfer" / "plugin")
    assert install._checkout_root() is None
    monkeypatch.setattr(install, "PACKAGE_DIR", tmp_path / "src" / "imgxfer" / "plugin")
    assert install._checkout_root() == tmp_path
    monkeypatch.setattr(install, "CHECKOUT_ROOT", None)
    assert timm.local_path() is None


def test_pip_error_lines_of_a_failed_build():
    assert install.pip_error_lines(BUILD_FAILURE) == [
        "Getting requirements to build wheel did not run successfully.",
        "setup.py says: broken on purpose"]


def test_pip_error_lines_are_few():
    noise = "\n".join(f"line {i}" for i in range(100))
    assert install.pip_error_lines(noise) == [f"line {i}" for i in range(94, 100)]
    errors = "\n".join(f"ERROR: problem {i}" for i in range(10))
    assert len(install.pip_error_lines(errors)) == 6


def test_builtin_cannot_be_installed(pip_calls):
    result = CliRunner().invoke(cli, ["install", "builtin"])
    assert result.exit_code == 2 and "built into imgxfer" in result.output and pip_calls == []


# -- uninstall ---------------------------------------------------------------------------
class _Dist:
    def __init__(self, name, version="0.3.0"):
        self.name, self.version = name, version


class _BrokenEntryPoint:
    """An installed entry point whose module cannot be imported."""

    group = "imgxfer"

    def __init__(self, name, dist):
        self.name, self.dist, self.value = name, _Dist(dist), f"{name}_module"

    def load(self):
        raise ImportError("No module named 'missing_dependency'")


@pytest.fixture
def entry_points(monkeypatch):
    """Installed entry points in group imgxfer: (entry point name, distribution) pairs."""
    def use(*pairs):
        eps = [_BrokenEntryPoint(n, d) for n, d in pairs]
        monkeypatch.setattr(md, "entry_points", lambda group=None: list(eps))
    return use


@pytest.mark.parametrize("name", ["mine", "imgxfer-mine", "imgxfer_mine", "IMGXFER.Mine"])
def test_uninstall_any_installed_plugin(pip_calls, entry_points, name):
    """`imgxfer plugins` lists `mine`, so `uninstall mine` removes its distribution, by
    either name, without importing it (this one is broken)."""
    entry_points(("mine", "imgxfer-mine"), ("timm", "imgxfer-timm"))
    result = CliRunner().invoke(cli, ["uninstall", name])
    assert result.exit_code == 0, result.output
    assert pip_calls == [[sys.executable, "-m", "pip", "uninstall", "--yes", "imgxfer-mine",
                          "--disable-pip-version-check", "--no-input"]]
    assert result.stdout.strip() == "uninstalled imgxfer-mine 0.3.0 (plugin mine)"


def test_uninstall_through_registry_toml(pip_calls, entry_points, monkeypatch):
    entry_points(("timm", "imgxfer-timm"))
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: "0.1.0")
    result = CliRunner().invoke(cli, ["uninstall", "timm"])
    assert result.exit_code == 0, result.output
    assert pip_calls[0][3:6] == ["uninstall", "--yes", "imgxfer-timm"]
    assert result.stdout.strip() == "uninstalled imgxfer-timm 0.1.0 (plugin timm)"


def test_uninstall_of_a_known_plugin_that_is_not_installed(pip_calls, entry_points,
                                                           monkeypatch):
    entry_points()
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: None)
    result = CliRunner().invoke(cli, ["uninstall", "timm"])
    assert result.exit_code == 2 and pip_calls == []
    assert result.output.strip() == "error: plugin 'timm' (imgxfer-timm) is not installed."


@pytest.mark.parametrize("name, message", [
    ("builtin", "error: plugin 'builtin' is built into imgxfer; there is nothing to install "
                "or remove."),
    ("imgxfer", "error: imgxfer itself is not a plugin; remove it with `pip uninstall "
                "imgxfer`."),
    ("nope", "error: no installed plugin is called 'nope'; installed plugins: mine "
             "(imgxfer-mine); a, b (imgxfer-twins) (see `imgxfer plugins`)."),
    ("shared", "error: several installed distributions provide a plugin 'shared' "
               "(imgxfer-mine, imgxfer-twins); uninstall one by its distribution name."),
])
def test_uninstall_refusals_are_one_sentence(pip_calls, entry_points, name, message):
    entry_points(("mine", "imgxfer-mine"), ("a", "imgxfer-twins"), ("b", "imgxfer-twins"),
                 ("shared", "imgxfer-mine"), ("shared", "imgxfer-twins"))
    if name == "nope":
        entry_points(("mine", "imgxfer-mine"), ("a", "imgxfer-twins"), ("b", "imgxfer-twins"))
    result = CliRunner().invoke(cli, ["uninstall", name])
    assert result.exit_code == 2 and pip_calls == []
    assert result.output.strip() == message


def test_uninstall_pip_failure(pip_calls, entry_points):
    entry_points(("mine", "imgxfer-mine"))
    pip_calls.returncode, pip_calls.stderr = 1, "ERROR: Cannot uninstall imgxfer-mine 0.3.0\n"
    result = CliRunner().invoke(cli, ["uninstall", "mine"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: pip could not uninstall imgxfer-mine (exit status 1):",
        "  ERROR: Cannot uninstall imgxfer-mine 0.3.0"]


def test_available_shows_directory():
    result = CliRunner().invoke(cli, ["plugins", "--available", "--json"])
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["builtin"]["installed"] and rows["timm"]["local_path"] == "plugins/imgxfer-timm"


# -- the hint for a component of a plugin that is not loaded -----------------------------
def test_unknown_component_of_an_uninstalled_plugin_hints_install(host, monkeypatch):
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: None)
    with pytest.raises(UnknownComponentError) as caught:
        host.registry.get("encoders", "timm/resnet18")
    assert str(caught.value) == ("unknown encoder 'timm/resnet18': it comes from plugin "
                                 "'timm', which is not installed; install it with `imgxfer "
                                 "install timm`.")
    result = CliRunner().invoke(cli, ["run", "--encoder", "timm/resnet18"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {caught.value}"


@pytest.mark.parametrize("name", ["diffusion", "diffusers:/models/sd15"])
def test_a_component_registry_toml_lists_hints_its_plugin(host, monkeypatch, name):
    """--generator diffusion is not named after its plugin: registry.toml's components
    say where it comes from."""
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: None)
    with pytest.raises(UnknownComponentError, match="it comes from plugin 'diffusers', "
                       "which is not installed; install it with `imgxfer install diffusers`"):
        host.registry.get("generators", name)


def test_hint_for_an_installed_plugin_that_is_not_loaded(host, monkeypatch):
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: "0.1.0")
    monkeypatch.setattr(install, "installed_plugins", lambda: {
        "imgxfer-timm": InstalledPlugin("imgxfer-timm", "0.1.0", ["timm"])})
    with pytest.raises(UnknownComponentError, match="installed but not loaded "
                       r"\(IMGXFER_LOAD_PLUGINS does not name it\)"):
        host.registry.get("encoders", "timm")
    host.plugins["timm"] = PluginInfo("timm", "0.1.0", "entry point", status="failed",
                                      error="import: ImportError: no timm")
    with pytest.raises(UnknownComponentError, match=r"installed but failed to load \(import: "
                       r"ImportError: no timm\); see `imgxfer plugins`"):
        host.registry.get("encoders", "timm/resnet18")


@pytest.mark.parametrize("kind, name", [("encoders", "nosuch/resnet18"),
                                        ("adapters", "timm/resnet18"),  # timm has no adapters
                                        ("encoders", "builtin/x")])
def test_no_hint_without_a_plugin_that_provides_the_name(host, monkeypatch, kind, name):
    monkeypatch.setattr(install.KnownPlugin, "installed_version", lambda self: None)
    with pytest.raises(UnknownComponentError) as caught:
        host.registry.get(kind, name)
    assert "available:" in str(caught.value) and "imgxfer install" not in str(caught.value)


def test_a_broken_registry_toml_never_hides_the_error(host, monkeypatch):
    def broken():
        raise OSError("registry.toml is unreadable")
    monkeypatch.setattr(install, "known_plugins", broken)
    with pytest.raises(UnknownComponentError, match="available:"):
        host.registry.get("encoders", "timm/resnet18")
