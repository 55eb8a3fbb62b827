"""What the CLI hands its commands: the plugin host, held by the click context and loaded
on first use. Commands ask for it here instead of fetching a process-wide registry, so
the built-in commands import nothing that loads plugins (no import circle through
``imgxfer.plugin.host``), and a caller can hand them another host."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import click

from imgxfer.plugin.registry import Registry


@dataclass
class CliState:
    load_host: Callable[[], Any]  # returns an imgxfer.plugin.host.PluginHost
    _host: Any = field(default=None, repr=False)

    @property
    def host(self) -> Any:
        if self._host is None:
            self._host = self.load_host()
        return self._host


def current_host() -> Any:
    """The plugin host of the running `imgxfer` command."""
    state = click.get_current_context().find_object(CliState)
    if state is None:
        raise RuntimeError("imgxfer commands get their plugin host from the imgxfer CLI group")
    return state.host


def current_registry() -> Registry:
    return cast(Registry, current_host().registry)
