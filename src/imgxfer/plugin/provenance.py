"""Which plugin distribution built each component of a run: recorded in the run's
config.toml (``[[provenance]]``), and read back when a run is predicted from or resumed
so that a component whose plugin is no longer installed is one sentence naming the
distribution and version to install, instead of "unknown encoder".

A row: ``kind`` (singular), ``name``, ``plugin``, ``distribution`` and ``version`` (where
the plugin came from an installed distribution); the encoder's row also holds its
``in_channels`` and ``input_size`` as built.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UnknownComponentError
from imgxfer.plugin.registry import CLASSIFY, SINGULAR, Component, Registry

CORE = "imgxfer"  # the built-ins' distribution: nothing to install beyond imgxfer


def record(config: RunConfig, registry: Registry, encoder: Any,
           components: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per component of ``components`` ((kind, name), as ``config.components()``
    lists them), each name once."""
    from imgxfer.plugin.protocols import encoder_input_size  # torch-heavy

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, name in components:
        row: dict[str, Any] = {"kind": SINGULAR[kind], "name": name,
                               **registry.origin(kind, name, config.task)}
        if kind == "encoders":  # what the run read its images as (issue 29)
            row.update(in_channels=int(encoder.in_channels),
                       input_size=list(encoder_input_size(encoder)))
        rows.setdefault((kind, name), row)
    return list(rows.values())


def _recorded(config: RunConfig, kind: str, name: str) -> dict[str, Any] | None:
    for row in config.provenance:
        if isinstance(row, dict) and row.get("kind") == SINGULAR[kind] and row.get("name") == name:
            return row
    return None


def require(registry: Registry, config: RunConfig, kind: str, name: str,
            task: str = CLASSIFY) -> Component:
    """``registry.get``, for a component a saved run names: when the name is unknown and
    the run recorded the plugin distribution it came from, the error says which
    distribution and version to install, and how."""
    try:
        return registry.get(kind, name, task)
    except UnknownComponentError:
        row = _recorded(config, kind, name)
        message = missing_plugin(kind, name, row) if row is not None else None
        if message is None:
            raise  # the registry's own words (and its hint for a plugin that is not loaded)
        raise UnknownComponentError(message) from None


def _installed_version(distribution: str) -> str | None:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def _install_command(distribution: str, version: str) -> str:
    """`imgxfer install NAME` for a plugin of registry.toml, else pip with the run's
    version pinned."""
    from imgxfer.plugin.install import known_plugins, normalise_name

    pip = f"pip install {distribution}" + (f"=={version}" if version else "")
    wanted = normalise_name(distribution)
    try:
        known = [p.name for p in known_plugins().values()
                 if not p.builtin and normalise_name(p.requirement) == wanted]
    except Exception:  # a broken registry.toml must not hide the error being explained
        known = []
    return f"`imgxfer install {known[0]}` (or `{pip}`)" if known else f"`{pip}`"


def missing_plugin(kind: str, name: str, row: dict[str, Any]) -> str | None:
    """One sentence: the run's component ``name`` needs the distribution ``row`` names,
    which is not installed or installed in another version; ``None`` when the row names
    none (a built-in, a plugin added from Python) or that very version is installed (then
    it failed to load or was not selected, which the registry's error already says)."""
    distribution, version = str(row.get("distribution") or ""), str(row.get("version") or "")
    if distribution in ("", CORE):
        return None
    needs = (f"unknown {SINGULAR[kind]} {name!r}: the run needs the plugin distribution "
             f"{distribution!r}" + (f" (version {version})" if version else ""))
    installed = _installed_version(distribution)
    if installed is None:
        return f"{needs}, which is not installed; install it with " \
               f"{_install_command(distribution, version)}."
    if version and installed != version:
        return (f"{needs}, and version {installed} is installed, which does not provide it; "
                f"install the run's version with `pip install {distribution}=={version}`.")
    return None
