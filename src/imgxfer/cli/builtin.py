"""The commands imgxfer itself adds beside run, list, plugins, install and uninstall (one
module each, imported when a command is looked up, so `imgxfer --help` stays light).
They are the CLI's own, added before any plugin's: a plugin that fails to add its
commands, even in strict mode, cannot take them away."""

from __future__ import annotations

from typing import Any


def add_builtin_commands(cli: Any) -> None:
    from imgxfer.cli.cache import cache_command
    from imgxfer.cli.caption import caption
    from imgxfer.cli.explain import explain_command
    from imgxfer.cli.generate import generate_command
    from imgxfer.cli.plugin import plugin_group
    from imgxfer.cli.predict import predict_command
    from imgxfer.cli.tune import tune_command

    for command in (caption, generate_command, predict_command, explain_command,
                    tune_command, cache_command, plugin_group):
        cli.add_command(command)
