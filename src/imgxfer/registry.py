"""The host-owned table of components: which plugin registered what, and how to build it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from imgxfer.errors import DuplicateComponentError, UnknownComponentError, UserError

KINDS = ("encoders", "captioners", "generators", "adapters", "datasets")
# The singular, as used in messages and CLI flags ("--encoder").
SINGULAR = {kind: kind[:-1] for kind in KINDS}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str

    @property
    def is_family(self) -> bool:
        return self.name.endswith(("/", ":"))

    def options(self) -> list[str]:
        """Keyword options the factory accepts (empty when it takes ``**kwargs``)."""
        params = inspect.signature(self.factory).parameters.values()
        names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return names[1:] if self.is_family else names

    def build(self, full_name: str, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        params = inspect.signature(self.factory).parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        valid = self.options()
        unknown = sorted(set(options) - set(valid))
        if unknown and not takes_any:
            raise UserError(
                f"{SINGULAR[self.kind]} '{full_name}' has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(valid) or 'none'}."
            )
        args = [full_name[len(self.name):]] if self.is_family else []
        if self.is_family and not args[0]:
            raise UserError(f"{SINGULAR[self.kind]} '{full_name}' needs a value after '{self.name}'.")
        try:
            return self.factory(*args, **options)
        except TypeError as exc:
            # A wrongly typed option value surfaces as a TypeError inside simple factories.
            if "argument" in str(exc) and options:
                raise UserError(f"invalid options for {SINGULAR[self.kind]} '{full_name}': {exc}.") from exc
            raise


@dataclass
class Registry:
    """Components by kind. Filled by :mod:`imgxfer.plugins` through the register hooks."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str,
            description: str = "") -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"plugin {plugin!r} registered a {SINGULAR[kind]} with an empty name")
        if not callable(factory):
            raise TypeError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with a non-callable factory")
        table = self.components[kind]
        if name in table:
            raise DuplicateComponentError(
                f"{SINGULAR[kind]} {name!r} is registered by both plugin {table[name].plugin!r} "
                f"and plugin {plugin!r}"
            )
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        table[name] = Component(kind, name, factory, plugin, description or (doc[0] if doc else ""))

    def remove_plugin(self, plugin: str) -> None:
        for table in self.components.values():
            for name in [n for n, c in table.items() if c.plugin == plugin]:
                del table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        return {
            kind: sorted(n for n, c in table.items() if c.plugin == plugin)
            for kind, table in self.components.items()
            if any(c.plugin == plugin for c in table.values())
        }

    def get(self, kind: str, name: str) -> Component:
        table = self.components[kind]
        if name in table:
            return table[name]
        # Longest family prefix wins, so "timm/" and a more specific "timm/vit_" can coexist.
        families = [c for n, c in table.items() if c.is_family and name.startswith(n)]
        if families:
            return max(families, key=lambda c: len(c.name))
        shown = [n + "<...>" if n.endswith(("/", ":")) else n for n in self.names(kind)]
        raise UnknownComponentError(
            f"unknown {SINGULAR[kind]} {name!r}; available: {', '.join(shown) or 'none'} "
            f"(see `imgxfer plugins` and `imgxfer list {kind}`)."
        )

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        return self.get(kind, name).build(name, options)
