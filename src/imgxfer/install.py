"""`imgxfer install/uninstall`: resolve a plugin through registry.toml and run pip in the
current interpreter. Arguments go to pip as a list; no user string reaches a shell."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from imgxfer.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
# src/imgxfer -> repo root, when running from a checkout (editable install or PYTHONPATH).
CHECKOUT_ROOT = PACKAGE_DIR.parents[1]


@dataclass
class KnownPlugin:
    name: str
    description: str
    kinds: list[str] = field(default_factory=list)
    requirement: str = ""
    path: str = ""
    builtin: bool = False

    def local_path(self) -> Path | None:
        """The plugin's folder in this checkout, if imgxfer runs from one."""
        if not self.path:
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
    """The checkout's registry.toml, else the copy packaged with imgxfer."""
    root = CHECKOUT_ROOT / "registry.toml"
    return root if root.is_file() else PACKAGE_DIR / "registry.toml"


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


def _pip(args: list[str], hint: str = "") -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise UserError(f"pip exited with status {result.returncode}; its output is above{hint}.")


def install(name: str, *, upgrade: bool = False) -> str:
    """Install a known plugin; returns what was given to pip."""
    plugin = resolve(name)
    local = plugin.local_path()
    target = str(local) if local is not None else plugin.requirement
    # Outside a checkout pip asks the package index, where a plugin may not be published
    # (imgxfer's own plugins are not, yet): say where else it can come from.
    hint = "" if local is not None or not plugin.path else (
        f" (if the index has no {plugin.requirement!r}, install it from a checkout of "
        f"imgxfer: pip install CHECKOUT/{plugin.path})")
    _pip(["install", *(["--upgrade"] if upgrade else []), target], hint)
    return target


def uninstall(name: str) -> str:
    plugin = resolve(name)
    if plugin.installed_version() is None:
        raise UserError(f"plugin {name!r} ({plugin.requirement}) is not installed.")
    _pip(["uninstall", "--yes", plugin.requirement])
    return plugin.requirement
