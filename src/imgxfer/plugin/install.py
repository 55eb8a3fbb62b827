"""`imgxfer install/uninstall`: resolve a plugin through registry.toml (uninstall also
through the installed entry points) and run pip quietly in the current interpreter.
Arguments go to pip as a list; no user string reaches a shell.

Where ``install`` takes a plugin from, first match wins: a folder of built wheels
(``--find-links DIR`` or ``IMGXFER_PLUGIN_WHEELS``), a package index (``--index-url URL``
or ``IMGXFER_PLUGIN_INDEX``), the plugin's folder when imgxfer runs from a checkout, else
pip's own index (PyPI unless pip is configured otherwise)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from imgxfer.core.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent


def _checkout_root() -> Path | None:
    """The repository root when imgxfer runs from a checkout (editable install or
    PYTHONPATH: the package lies in ROOT/src/imgxfer); None for an installed wheel."""
    root = PACKAGE_DIR.parents[2]
    return root if PACKAGE_DIR.parents[1].name == "src" and (
        root / "pyproject.toml").is_file() else None


CHECKOUT_ROOT = _checkout_root()
# Where `imgxfer install` looks before the checkout and pip's index, when it is given no
# --find-links or --index-url.
WHEELS_ENV = "IMGXFER_PLUGIN_WHEELS"
INDEX_ENV = "IMGXFER_PLUGIN_INDEX"


@dataclass
class KnownPlugin:
    name: str
    description: str
    kinds: list[str] = field(default_factory=list)
    requirement: str = ""
    path: str = ""
    builtin: bool = False
    # Optional dependencies installed with it (pip's "[a,b]"), e.g. what a part needs.
    extras: list[str] = field(default_factory=list)
    # Component names it registers (families end in / or :), for the hint an unknown
    # name gets when the plugin is not installed.
    components: list[str] = field(default_factory=list)

    def local_path(self) -> Path | None:
        """The plugin's folder in this checkout, if imgxfer runs from one."""
        if not self.path or CHECKOUT_ROOT is None:
            return None
        candidate = CHECKOUT_ROOT / self.path
        return candidate if (candidate / "pyproject.toml").is_file() else None

    def installed_version(self) -> str | None:
        if self.builtin:
            return md.version("imgxfer")
        try:
            return md.version(self.requirement)
        except md.PackageNotFoundError:
            return None


def registry_file() -> Path:
    """The plugin directory, packaged with imgxfer (the checkout's root registry.toml is
    a link to it, so there is one copy to edit)."""
    return PACKAGE_DIR / "registry.toml"


def known_plugins(path: Path | None = None) -> dict[str, KnownPlugin]:
    path = path or registry_file()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {name: KnownPlugin(name=name, **entry) for name, entry in data.get("plugins", {}).items()}


def resolve(name: str, plugins: dict[str, KnownPlugin] | None = None) -> KnownPlugin:
    plugins = plugins if plugins is not None else known_plugins()
    if name not in plugins:
        raise UserError(f"unknown plugin {name!r}; known plugins: {', '.join(sorted(plugins))} "
                        "(see `imgxfer plugins --available`).")
    plugin = plugins[name]
    if plugin.builtin:
        raise UserError(f"plugin {name!r} is built into imgxfer; there is nothing to install or remove.")
    return plugin


# pip's own lines that say nothing about the failure.
_NOISE = ("[notice]", "note: This error originates from a subprocess")


def pip_error_lines(output: str, limit: int = 6) -> list[str]:
    """The few lines of pip's output that explain a failure: what failed in a build and
    the last lines the build printed, then pip's ``ERROR:`` and ``Hint:`` lines; its last
    lines when it printed none of those."""
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not any(n in line for n in _NOISE)]
    shown: list[str] = []
    ends = [i for i, line in enumerate(lines) if line == "[end of output]"]
    if ends:  # a build failed; its own output lies between "╰─>" and "[end of output]"
        starts = [i for i in range(ends[-1]) if lines[i].startswith("╰─>")]
        first = starts[-1] + 1 if starts else max(0, ends[-1] - 3)
        failed = [line.lstrip("× ").strip() for line in lines[:first] if line.startswith("×")]
        shown = failed[-1:] + lines[first:ends[-1]][-3:]
    shown += [line for line in lines if line.startswith(("ERROR:", "Hint:"))]
    return shown[:limit] if shown else lines[-limit:]


def _pip(args: list[str], what: str, hint: str = "") -> None:
    """Run pip in this interpreter, quietly; on failure a :class:`UserError` with the lines
    of its output that explain why."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        why = pip_error_lines((result.stdout or "") + "\n" + (result.stderr or ""))
        detail = "".join(f"\n  {line}" for line in why)
        raise UserError(f"pip could not {what} (exit status {result.returncode}){hint}"
                        f"{':' if detail else '.'}{detail}")


def normalise_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class InstalledPlugin:
    """An installed distribution that provides entry points in group ``imgxfer``."""

    distribution: str
    version: str
    entry_points: list[str] = field(default_factory=list)


def installed_plugins() -> dict[str, InstalledPlugin]:
    """Installed plugin distributions by normalised name (read from metadata only: no
    plugin is imported, so a broken one is found too)."""
    from imgxfer.plugin.hookspecs import ENTRY_POINT_GROUP

    importlib.invalidate_caches()
    found: dict[str, InstalledPlugin] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is None:
            continue
        key = normalise_name(ep.dist.name)
        plugin = found.setdefault(key, InstalledPlugin(ep.dist.name, ep.dist.version))
        if ep.name not in plugin.entry_points:
            plugin.entry_points.append(ep.name)
    return found


def _entry_points_of(distribution: str) -> InstalledPlugin | None:
    return installed_plugins().get(normalise_name(distribution))


PROBE = """
import json, sys, warnings
from imgxfer.plugin.host import PluginHost
warnings.simplefilter("ignore")
host = PluginHost({"IMGXFER_LOAD_PLUGINS": sys.argv[1]}).load_all()
print(json.dumps([i.as_dict() for n, i in host.plugins.items() if n != "builtin"]))
"""


def probe_plugins(entry_points: list[str]) -> list[dict[str, Any]] | None:
    """Load the named entry points in a fresh interpreter (one that sees what pip just
    installed) and return each plugin's record (``PluginInfo.as_dict``); ``None`` when
    that interpreter could not tell."""
    if not entry_points:
        return []
    try:
        result = subprocess.run([sys.executable, "-c", PROBE, ",".join(entry_points)],
                                check=False, capture_output=True, text=True, timeout=600)
        return cast("list[dict[str, Any]]",
                    json.loads((result.stdout or "").strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclass
class InstallResult:
    """What ``imgxfer install`` did: the distribution, its version before and after, and
    the plugins (entry points) it provides as a fresh imgxfer loads them."""

    name: str
    target: str  # what pip was given: a wheel, a local folder or a requirement (and index)
    distribution: str
    version: str | None
    previous: str | None
    plugins: list[dict[str, Any]] | None  # None: could not be checked

    def summary(self) -> list[str]:
        if self.version is None:
            lines = [f"warning: pip installed {self.target}, but no distribution "
                     f"{self.distribution!r} is installed now (see registry.toml's requirement)."]
        elif self.previous is None:
            lines = [f"installed {self.distribution} {self.version} (from {self.target})"]
        elif self.previous != self.version:
            lines = [f"upgraded {self.distribution} {self.previous} -> {self.version} "
                     f"(from {self.target})"]
        else:
            lines = [f"{self.distribution} {self.version} is installed (it was already)"]
        if self.plugins is None:
            lines.append("could not check that the plugin loads; `imgxfer plugins` shows it.")
        elif not self.plugins and self.version is not None:
            lines.append(f"warning: {self.distribution} has no entry point in group "
                         "'imgxfer', so imgxfer will not load it.")
        for plugin in self.plugins or []:
            if plugin.get("status") != "ok":
                lines.append(f"warning: plugin {plugin['name']!r} fails to load "
                             f"({plugin.get('error', '?')}); `imgxfer plugins` shows it.")
                continue
            parts = [f"{kind} " + ", ".join(n + "<...>" if n.endswith(("/", ":")) else n
                                            for n in names)
                     for kind, names in plugin.get("components", {}).items()]
            lines.append(f"plugin {plugin['name']!r}: {'; '.join(parts) or 'no components'}")
        if self.plugins and all(p.get("status") == "ok" for p in self.plugins):
            lines.append("ready: the next imgxfer command loads it (no restart needed).")
        return lines


def find_wheel(folder: Path, distribution: str) -> Path:
    """The newest wheel of ``distribution`` in ``folder`` that this Python can install
    (what ``python -m build`` or ``make wheels`` wrote there)."""
    if not folder.is_dir():
        raise UserError(f"the wheel folder {str(folder)!r} (--find-links or {WHEELS_ENV}) "
                        "is not a folder.")
    wanted, supported = canonicalize_name(distribution), set(sys_tags())
    found = []
    for path in sorted(folder.glob("*.whl")):
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if name == wanted and tags & supported:
            found.append((version, path))
    if not found:
        raise UserError(f"the wheel folder {str(folder)!r} holds no wheel of {distribution} "
                        "that this Python can install; build one with `python -m build "
                        "--outdir DIR PLUGIN_FOLDER` (in a checkout: `make wheels`).")
    return max(found)[1]


@dataclass
class Source:
    """Where ``imgxfer install`` takes a plugin from: what pip installs, the pip options
    that say where from, and what a failure adds to pip's own lines."""

    target: str
    options: list[str] = field(default_factory=list)
    hint: str = ""
    index_url: str = ""

    def __str__(self) -> str:
        return self.target + (f" at {self.index_url}" if self.index_url else "")


def source(plugin: KnownPlugin, wheels: str | Path | None = None,
           index_url: str | None = None) -> Source:
    """The plugin's wheel in a folder, else its requirement from a given index, else its
    folder in this checkout, else its requirement from pip's own index (see the module
    docstring). ``wheels`` and ``index_url`` default to :data:`WHEELS_ENV` and
    :data:`INDEX_ENV`."""
    extras = f"[{','.join(plugin.extras)}]" if plugin.extras else ""
    wheels = wheels or os.environ.get(WHEELS_ENV) or None
    index_url = index_url or os.environ.get(INDEX_ENV) or None
    if wheels is not None:
        if "://" in str(wheels):
            raise UserError(f"--find-links ({WHEELS_ENV}) takes a folder of wheels on this "
                            f"machine, not {str(wheels)!r}; give a package index with "
                            "--index-url.")
        folder = Path(wheels).expanduser().absolute()
        # The wheel file itself, so no newer release on an index takes its place; the
        # folder also serves its dependencies (imgxfer's own wheel, say).
        return Source(f"{find_wheel(folder, plugin.requirement)}{extras}",
                      ["--find-links", str(folder)])
    if index_url is not None:
        index_folder = Path(index_url).expanduser()
        if index_folder.is_dir():  # a folder laid out as an index (PEP 503), as pip allows
            index_url = index_folder.absolute().as_uri()
        elif urlsplit(index_url).scheme not in ("http", "https", "file"):
            raise UserError(f"--index-url ({INDEX_ENV}) takes a package index: an address "
                            f"(https://..., file:///...) or a folder laid out as one, not "
                            f"{index_url!r}; give a folder of wheels with --find-links.")
        return Source(plugin.requirement + extras, ["--index-url", index_url],
                      index_url=index_url)
    local = plugin.local_path()
    if local is not None:
        return Source(f"{local}{extras}")
    # Outside a checkout pip asks its index, where a plugin may not be published
    # (imgxfer's own plugins are not, yet): say where else it can come from.
    hint = "" if not plugin.path else (
        f" (if the index has no {plugin.requirement!r}, give a folder of its wheel with "
        f"--find-links DIR, or install it from a checkout of imgxfer: pip install "
        f"CHECKOUT/{plugin.path})")
    return Source(plugin.requirement + extras, hint=hint)


def install(name: str, *, upgrade: bool = False, wheels: str | Path | None = None,
            index_url: str | None = None) -> InstallResult:
    """Install a known plugin with pip, from where :func:`source` says, and check in a
    fresh interpreter what it registers."""
    plugin = resolve(name)
    where = source(plugin, wheels, index_url)
    previous = plugin.installed_version()
    _pip(["install", *(["--upgrade"] if upgrade else []), *where.options, where.target],
         f"install {plugin.requirement}", where.hint)
    importlib.invalidate_caches()
    installed = _entry_points_of(plugin.requirement)
    version = installed.version if installed else plugin.installed_version()
    probed = probe_plugins(installed.entry_points) if installed else []
    return InstallResult(name, str(where), plugin.requirement, version, previous, probed)


@dataclass
class UninstallTarget:
    """The distribution ``imgxfer uninstall`` removes and the plugins (entry points) it
    provides."""

    distribution: str
    version: str
    entry_points: list[str]


def resolve_installed(name: str) -> UninstallTarget:
    """The installed distribution ``imgxfer uninstall NAME`` removes: NAME from
    registry.toml, else an installed entry point or plugin distribution of that name."""
    known = known_plugins()
    installed = installed_plugins()
    if name in known:
        plugin = resolve(name, known)  # refuses the built-in plugin
        found = installed.get(normalise_name(plugin.requirement))
        version = plugin.installed_version()
        if version is None:
            raise UserError(f"plugin {name!r} ({plugin.requirement}) is not installed.")
        return UninstallTarget(plugin.requirement, version,
                               found.entry_points if found else [name])
    if normalise_name(name) == "imgxfer":
        raise UserError("imgxfer itself is not a plugin; remove it with `pip uninstall "
                        "imgxfer`.")
    matches = [p for p in installed.values() if name in p.entry_points
               or normalise_name(p.distribution) == normalise_name(name)]
    if any(normalise_name(p.distribution) == "imgxfer" for p in matches):
        raise UserError(f"plugin {name!r} is part of imgxfer itself; there is nothing to "
                        "uninstall.")
    if len(matches) > 1:
        raise UserError(f"several installed distributions provide a plugin {name!r} "
                        f"({', '.join(sorted(p.distribution for p in matches))}); uninstall "
                        "one by its distribution name.")
    if not matches:
        shown = [f"{', '.join(p.entry_points)} ({p.distribution})"
                 for p in sorted(installed.values(), key=lambda p: p.distribution)]
        raise UserError(f"no installed plugin is called {name!r}; installed plugins: "
                        f"{'; '.join(shown) or 'none'} (see `imgxfer plugins`).")
    match = matches[0]
    return UninstallTarget(match.distribution, match.version, list(match.entry_points))


def uninstall(name: str) -> UninstallTarget:
    """Uninstall the distribution that provides plugin ``name`` (see
    :func:`resolve_installed`); plugins are never imported, so a broken one goes too."""
    target = resolve_installed(name)
    _pip(["uninstall", "--yes", target.distribution], f"uninstall {target.distribution}")
    importlib.invalidate_caches()
    return target
