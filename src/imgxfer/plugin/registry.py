"""The host-owned table of components: which plugin registered what, and how to build it."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgxfer.core.errors import DuplicateComponentError, UnknownComponentError, UserError

KINDS = ("encoders", "captioners", "generators", "adapters", "datasets")
# The singular, as used in messages and CLI flags ("--encoder").
SINGULAR = {kind: kind[:-1] for kind in KINDS}
# What a run does (``--task``): classify images, segment them (a class per pixel) or
# detect objects (boxes). A factory declares the tasks its components serve as a
# ``tasks`` attribute (default: classify only).
TASKS = ("classify", "segment", "detect")
CLASSIFY = "classify"
# The kinds whose components serve some tasks only. Any encoder serves every task (a
# dense model reads its feature maps), and a generator serves a dense run when it can
# translate (checked where the run is planned).
TASKED = ("adapters", "datasets")


def declared_tasks(factory: Callable[..., Any]) -> frozenset[str]:
    return frozenset(getattr(factory, "tasks", (CLASSIFY,)))


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str

    @property
    def tasks(self) -> frozenset[str]:
        return declared_tasks(self.factory)

    @property
    def is_family(self) -> bool:
        return self.name.endswith(("/", ":"))

    def _parameters(self) -> list[inspect.Parameter]:
        params = list(inspect.signature(self.factory).parameters.values())
        # A family factory's first parameter receives the rest of the name, not an option.
        return params[1:] if self.is_family else params

    def options(self) -> list[str]:
        """Keyword options the factory accepts."""
        return [p.name for p in self._parameters()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def defaults(self) -> dict[str, Any]:
        """The options that have a default, with it (an option without one must be given)."""
        params = {p.name: p for p in self._parameters()}
        return {name: params[name].default for name in self.options()
                if params[name].default is not inspect.Parameter.empty}

    def build(self, full_name: str, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        what = f"{SINGULAR[self.kind]} '{full_name}'"
        params = {p.name: p for p in self._parameters()}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(options) - set(self.options()))
        if unknown and not takes_any:
            raise UserError(f"{what} has no option {', '.join(map(repr, unknown))}; "
                            f"valid options: {', '.join(self.options()) or 'none'}.")
        for key, value in options.items():
            _check_option(what, params.get(key), key, value)
        args = [full_name[len(self.name):]] if self.is_family else []
        if self.is_family and not args[0]:
            raise UserError(f"{what} needs a value after '{self.name}'.")
        from imgxfer.plugin.protocols import check_component  # torch-heavy; loaded on first build

        return check_component(self.kind, self.factory(*args, **options), full_name, self.plugin)


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is or holds (in a list or table) a NaN or an infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(_non_finite, value))
    if isinstance(value, dict):
        return any(map(_non_finite, value.values()))
    return False


def _check_option(what: str, param: inspect.Parameter | None, key: str, value: Any) -> None:
    """Refuse an option whose type differs from its default's (``width="abc"``), or a NaN
    or infinite number (``lr=nan``: TOML reads nan and inf as floats), so the user reads
    one sentence instead of an error from deep inside a model or an optimiser."""
    if _non_finite(value):
        raise UserError(f"{what}: option {key} must be a finite number, got {value!r}.")
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        return
    expected = type(param.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected in (bool, int, float, str) and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise UserError(f"{what}: option {key} must be {expected.__name__}, got {value!r}.")


@dataclass
class Registry:
    """Components by kind. Filled by :mod:`imgxfer.plugin.host` through the register hooks.

    Components whose factory declares only dense tasks (``tasks = {"segment",
    "detect"}``) live in a table of their own, ``dense``: a segmentation ``finetune`` is
    another method than the classifier's ``finetune`` of the same name, and each run
    looks names up in the table of its task (:meth:`get`)."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    dense: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str,
            description: str = "") -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"plugin {plugin!r} registered a {SINGULAR[kind]} with an empty name")
        if not callable(factory):
            raise TypeError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with a non-callable factory")
        tasks = declared_tasks(factory)
        if not tasks or not tasks <= set(TASKS):
            raise ValueError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with "
                             f"tasks {sorted(tasks)}; tasks are {', '.join(TASKS)}")
        table = self.components[kind] if CLASSIFY in tasks else self.dense[kind]
        if name in table:
            raise DuplicateComponentError(
                f"{SINGULAR[kind]} {name!r} is registered by both plugin {table[name].plugin!r} "
                f"and plugin {plugin!r}"
            )
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        table[name] = Component(kind, name, factory, plugin, description or (doc[0] if doc else ""))

    def remove_plugin(self, plugin: str) -> None:
        for table in [*self.components.values(), *self.dense.values()]:
            for name in [n for n, c in table.items() if c.plugin == plugin]:
                del table[name]

    def names(self, kind: str, task: str = CLASSIFY) -> list[str]:
        """The names a run of ``task`` can use."""
        if task == CLASSIFY or kind not in TASKED:
            return sorted(self.components[kind])
        both = [*self.components[kind].values(), *self.dense[kind].values()]
        return sorted({c.name for c in both if task in c.tasks})

    def all(self, kind: str) -> list[Component]:
        """Every component of ``kind``, whatever its tasks."""
        return [*self.components[kind].values(), *self.dense[kind].values()]

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        return {kind: sorted({c.name for c in self.all(kind) if c.plugin == plugin})
                for kind in KINDS if any(c.plugin == plugin for c in self.all(kind))}

    def get(self, kind: str, name: str, task: str = CLASSIFY) -> Component:
        """The component ``name`` of a run of ``task``; an unknown name, or one that
        serves other tasks, is one sentence naming those that would work."""
        for table in ([self.dense[kind]] if task != CLASSIFY else []) + [self.components[kind]]:
            found = _lookup(table, name)
            if found is not None and (task in found.tasks or kind not in TASKED):
                return found
        shown = [n + "<...>" if n.endswith(("/", ":")) else n for n in self.names(kind, task)]
        elsewhere = sorted({t for c in self.all(kind) if _lookup({c.name: c}, name)
                            for t in c.tasks}, key=TASKS.index)
        if elsewhere:
            raise UnknownComponentError(
                f"{SINGULAR[kind]} {name!r} is for --task {' or '.join(elsewhere)}, not "
                f"--task {task}; {SINGULAR[kind]}s for {task}: {', '.join(shown) or 'none'}.")
        if kind == "datasets" and Path(name).expanduser().is_dir():  # a folder, not a name
            raise UnknownComponentError(
                f"{name!r} is a folder, not a dataset name; give it as folder:{name} "
                "(one sub-folder of images per class).")
        raise UnknownComponentError(
            f"unknown {SINGULAR[kind]} {name!r}; available: {', '.join(shown) or 'none'} "
            f"(see `imgxfer plugins` and `imgxfer list {kind}`)."
        )

    def origin(self, kind: str, name: str, task: str = CLASSIFY) -> dict[str, str]:
        """Where ``name`` comes from: the plugin that registered it (a plugin host's
        registry adds the distribution that installed that plugin, and its version)."""
        return {"plugin": self.get(kind, name, task).plugin}

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None, *,
              seed: int | None = None, augment: str | None = None,
              task: str = CLASSIFY) -> Any:
        """Build a component (checked against its protocol). The run-wide settings
        ``seed`` and ``augment`` go to a factory that takes a keyword of that name, unless
        the user set one in the component's options."""
        component = self.get(kind, name, task)
        options = dict(options or {})
        for key, value in (("seed", seed), ("augment", augment or None)):
            if value is not None and key in component.options():
                options.setdefault(key, value)
        return component.build(name, options)


def _lookup(table: dict[str, Component], name: str) -> Component | None:
    if name in table:
        return table[name]
    # Longest family prefix wins, so "timm/" and a more specific "timm/vit_" can coexist.
    families = [c for n, c in table.items() if c.is_family and name.startswith(n)]
    return max(families, key=lambda c: len(c.name)) if families else None
