"""Finding, loading and isolating plugins; builds the component :class:`Registry`.

Built-in components come from :mod:`imgxfer.components.builtin`; third-party ones from entry points
in group ``imgxfer``. ``IMGXFER_LOAD_PLUGINS`` selects entry points (unset: all, empty:
none, ``a,b``: those), and a plugin that fails to import or register is skipped with a
warning, unless ``IMGXFER_STRICT_PLUGINS=1``.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from imgxfer import UNKNOWN_VERSION, __version__
from imgxfer.core.errors import UnknownComponentError, UserError
from imgxfer.plugin import hookspecs
from imgxfer.plugin.registry import CLASSIFY, KINDS, SINGULAR, Component, Registry

ENTRY_POINT_GROUP = hookspecs.ENTRY_POINT_GROUP
BUILTIN = "builtin"
BUILTIN_MODULE = "imgxfer.components.builtin"


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to import or register."""


class IncompatiblePlugin(Exception):
    """A plugin's distribution requires imgxfer versions that exclude this one."""


class PluginLoadError(UserError, RuntimeError):
    """With IMGXFER_STRICT_PLUGINS=1, a plugin failed to import or register: one sentence
    naming it (a UserError, so the CLI shows no traceback; a RuntimeError, as it was)."""


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in", "entry point" or "added" (added from Python, e.g. tests)
    status: str = "ok"  # "ok" or "failed"
    error: str = ""
    components: dict[str, list[str]] = field(default_factory=dict)
    # The installed distribution that provides it ("imgxfer" for the built-ins; "" for a
    # plugin added from Python), which a run records so a missing one can be named.
    distribution: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "source": self.source,
            "status": self.status, "error": self.error, "components": self.components,
            "distribution": self.distribution,
        }


def _strict(env: os._Environ[str] | dict[str, str]) -> bool:
    return env.get("IMGXFER_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def incompatibility(dist: md.Distribution | None,
                    version: str = __version__) -> IncompatiblePlugin | None:
    """Why a plugin cannot be loaded with imgxfer ``version``: its distribution requires
    other imgxfer versions (pip lets an upgrade of imgxfer past a plugin's range through
    with a warning). None when it fits, or says nothing."""
    if dist is None or version == UNKNOWN_VERSION:  # a source tree never installed
        return None
    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != "imgxfer" or (
                req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        if not req.specifier.contains(version, prereleases=True):
            return IncompatiblePlugin(
                f"{dist.metadata['Name']} {dist.version} needs imgxfer{req.specifier}, and this "
                f"is imgxfer {version}; `pip install --upgrade {dist.metadata['Name']}` may "
                "bring a version made for it")
    return None


def _first_line(exc: BaseException) -> str:
    """``_describe`` cut to its first line, for a one-sentence error."""
    lines = _describe(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


@dataclass
class HintingRegistry(Registry):
    """A :class:`Registry` whose unknown-name error says which known plugin would provide
    the name, when ``hint(kind, name)`` knows one (see :meth:`PluginHost.missing_plugin`)."""

    hint: Callable[[str, str], str | None] | None = field(default=None, repr=False,
                                                          compare=False)
    # plugin name -> {"distribution": ..., "version": ...} (PluginHost.distribution_of)
    distribution: Callable[[str], dict[str, str]] | None = field(default=None, repr=False,
                                                                 compare=False)

    def origin(self, kind: str, name: str, task: str = CLASSIFY) -> dict[str, str]:
        found = super().origin(kind, name, task)
        return {**found, **(self.distribution(found["plugin"]) if self.distribution else {})}

    def get(self, kind: str, name: str, task: str = CLASSIFY) -> Component:
        try:
            return super().get(kind, name, task)
        except UnknownComponentError as error:
            if str(error).startswith(f"{SINGULAR[kind]} {name!r} is for --task"):
                raise  # registered, for another task: nothing to install
            hint = self.hint(kind, name) if self.hint is not None else None
            if not hint:
                raise
        raise UnknownComponentError(f"unknown {SINGULAR[kind]} {name!r}: {hint}.")


class PluginHost:
    """A pluggy manager plus the registry its plugins filled and a record of each plugin."""

    def __init__(self, env: dict[str, str] | os._Environ[str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = HintingRegistry(hint=self.missing_plugin,
                                        distribution=self.distribution_of)
        self.plugins: dict[str, PluginInfo] = {}

    def distribution_of(self, plugin: str) -> dict[str, str]:
        """The distribution that installed ``plugin`` and its version ({} when unknown:
        a plugin added from Python)."""
        info = self.plugins.get(plugin)
        if info is None or not info.distribution:
            return {}
        return {"distribution": info.distribution, "version": info.version}

    def missing_plugin(self, kind: str, name: str) -> str | None:
        """For a component name no loaded plugin registered: the plugin of registry.toml
        that would provide it (its name is the component's name, or the family prefix
        before ``/`` or ``:``, and it has components of this kind) and what to do, as it is
        not installed, failed to load or was not selected; ``None`` when there is none."""
        try:
            from imgxfer.plugin.install import installed_plugins, known_plugins, normalise_name

            prefix = re.split(r"[/:]", name, maxsplit=1)[0]
            known = known_plugins()
            # By the plugin's name ("timm/..."), else by the components it lists.
            plugin = known.get(prefix) or next(
                (p for p in known.values() if name in p.components
                 or any(c.endswith(("/", ":")) and name.startswith(c) for c in p.components)),
                None)
            if plugin is None or plugin.builtin or kind not in plugin.kinds:
                return None
            if plugin.installed_version() is None:
                return (f"it comes from plugin {plugin.name!r}, which is not installed; "
                        f"install it with `imgxfer install {plugin.name}`")
            dist = installed_plugins().get(normalise_name(plugin.requirement))
            names = dist.entry_points if dist is not None else [plugin.name]
            infos = [self.plugins[n] for n in names if n in self.plugins]
            failed = [i for i in infos if i.status != "ok"]
            if failed:
                return (f"it comes from plugin {failed[0].name!r}, which is installed but "
                        f"failed to load ({failed[0].error}); see `imgxfer plugins`")
            if not infos:
                why = ("IMGXFER_LOAD_PLUGINS does not name it" if "IMGXFER_LOAD_PLUGINS"
                       in self.env else "see `imgxfer plugins`")
                return (f"it comes from plugin {plugin.name!r}, which is installed but not "
                        f"loaded ({why})")
        except Exception:  # a hint must never hide the error it decorates
            return None
        return None

    # -- loading -----------------------------------------------------------------------
    def load_all(self) -> PluginHost:
        """Load the built-in plugin and the selected entry points (once; idempotent)."""
        if BUILTIN in self.plugins:
            return self
        # By name, as an entry point would be: the plugin layer sits below the built-in
        # components it loads (docs/architecture.md, "Layers").
        builtin = importlib.import_module(BUILTIN_MODULE)
        self.add(builtin, BUILTIN, version=__version__, source="built-in",
                 distribution="imgxfer")
        for ep in self._selected_entry_points():
            if ep.name in self.plugins or self.pm.has_plugin(ep.name):
                # The same distribution seen twice on sys.path (e.g. an editable and a
                # normal install), or a name taken by the built-in plugin.
                warnings.warn(f"entry point {ep.name!r} ({ep.value}) was ignored: a plugin of "
                              "that name is already loaded.", PluginLoadWarning, stacklevel=2)
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            distribution = ep.dist.metadata["Name"] if ep.dist is not None else ""
            mismatch = incompatibility(ep.dist)
            if mismatch is not None:  # not imported: its code may not work with this imgxfer
                self._fail(ep.name, version, "entry point", mismatch, stage="load")
                continue
            try:
                module = ep.load()
            except Exception as exc:  # any import failure must not stop the host
                self._fail(ep.name, version, "entry point", exc, stage="import")
                continue
            self.add(module, ep.name, version=version, source="entry point",
                     distribution=distribution)
        return self

    def _selected_entry_points(self) -> list[md.EntryPoint]:
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        wanted = self.env.get("IMGXFER_LOAD_PLUGINS")
        if wanted is None:
            return list(eps)
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        known = {ep.name for ep in eps}
        for name in names:
            if name not in known and name != BUILTIN:
                warnings.warn(
                    f"IMGXFER_LOAD_PLUGINS names {name!r}, which is not an installed plugin "
                    f"(installed: {', '.join(sorted(known)) or 'none'}).",
                    PluginLoadWarning, stacklevel=2,
                )
        return [ep for ep in eps if ep.name in names]

    def add(self, plugin: ModuleType | object, name: str, *, version: str = "?",
            source: str = "added", distribution: str = "") -> PluginInfo:
        """Register one plugin and run its register hooks; on failure it is rolled back."""
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # e.g. a hookimpl whose signature does not match a spec
            return self._fail(name, version, source, exc, stage="register")
        try:
            for kind in KINDS:
                self._call(plugin, name, kind)
        except Exception as exc:
            self.registry.remove_plugin(name)
            self.pm.unregister(name=name)
            return self._fail(name, version, source, exc, stage="register")
        info = PluginInfo(name, version, source, components=self.registry.by_plugin(name),
                          distribution=distribution)
        self.plugins[name] = info
        return info

    def remove(self, name: str) -> None:
        self.registry.remove_plugin(name)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.plugins.pop(name, None)

    def _call(self, plugin: object, name: str, kind: str) -> None:
        hook = f"register_{kind}"
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin:

                def register(comp_name: str, factory: Any, *, description: str = "",
                             _kind: str = kind) -> None:
                    self.registry.add(_kind, comp_name, factory, name, description)

                impl.function(*[{"register": register}[a] for a in impl.argnames])

    def _fail(self, name: str, version: str, source: str, exc: BaseException,
              stage: str) -> PluginInfo:
        if _strict(self.env):
            raise PluginLoadError(
                f"plugin {name!r} failed to {stage} ({_first_line(exc)}); fix or uninstall "
                f"it (imgxfer uninstall {name}), or unset IMGXFER_STRICT_PLUGINS to skip it."
            ) from exc
        warnings.warn(
            f"plugin {name!r} was skipped: it failed to {stage} ({_describe(exc)}); "
            f"set IMGXFER_STRICT_PLUGINS=1 to raise instead.",
            PluginLoadWarning, stacklevel=3,
        )
        info = PluginInfo(name, version, source, status="failed",
                          error=f"{stage}: {_describe(exc)}")
        self.plugins[name] = info
        return info

    # -- commands -----------------------------------------------------------------------
    def add_commands(self, cli: Any) -> None:
        """Let every loaded plugin add click commands; a failing plugin is isolated."""
        owners = {command: "imgxfer" for command in cli.commands}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            name = self.pm.get_name(impl.plugin)
            assert name is not None  # a hook implementation's plugin is registered
            before = dict(cli.commands)
            try:
                impl.function(*[{"cli": cli}[a] for a in impl.argnames])
                added = [c for c in cli.commands if before.get(c) is not cli.commands[c]]
                taken = [c for c in added if c in owners]
                if taken:  # never let a plugin silently replace another's command
                    raise ValueError(f"command {taken[0]!r} is already provided by "
                                     f"{owners[taken[0]]!r}")
            except Exception as exc:
                cli.commands.clear()
                cli.commands.update(before)
                info = self.plugins.get(name)
                self._fail(name, info.version if info else "?", info.source if info else "?",
                           exc, stage="add commands")
                continue
            owners.update(dict.fromkeys(added, name))
            if added and name in self.plugins:
                self.plugins[name].components["commands"] = sorted(added)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost().load_all()
    return _HOST


def reset_host() -> None:
    """Forget the loaded host (tests, or after installing a plugin in-process)."""
    global _HOST
    _HOST = None


def get_registry() -> Registry:
    return get_host().registry
