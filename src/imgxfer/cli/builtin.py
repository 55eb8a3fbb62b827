"""The commands imgxfer itself adds beside run, list, plugins, install and uninstall: one
module each, named in a table with its one-line help, so that `imgxfer --help` lists
them without importing them (or torch), and a command's module is imported when that
command runs. They are the CLI's own, added before any plugin's: a plugin that fails to
add its commands, even in strict mode, cannot take them away."""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click


class LazyCommand(NamedTuple):
    module: str
    attribute: str
    short_help: str  # the command's own short_help; tests/test_cli_run.py keeps them equal


LAZY_COMMANDS = {
    "caption": LazyCommand("imgxfer.cli.caption", "caption",
                           "Caption images into a JSONL file."),
    "generate": LazyCommand("imgxfer.cli.generate", "generate_command",
                            "Draw images from a run's generator."),
    "predict": LazyCommand("imgxfer.cli.predict", "predict_command",
                           "Classify images with a run's classifier."),
    "explain": LazyCommand("imgxfer.cli.explain", "explain_command",
                           "Heat maps of where a run's classifier looks."),
    "export": LazyCommand("imgxfer.cli.export", "export_command",
                          "Export a run's model to ONNX or TorchScript for serving."),
    "tune": LazyCommand("imgxfer.cli.tune", "tune_command",
                        "Search adapter and generator options with Optuna."),
    "cache": LazyCommand("imgxfer.cli.cache", "cache_command",
                         "Show or clear the feature cache."),
    "plugin": LazyCommand("imgxfer.cli.plugin", "plugin_group",
                          "Tools for writing plugins (plugin new)."),
}


def load_command(name: str) -> click.Command:
    lazy = LAZY_COMMANDS[name]
    command = getattr(importlib.import_module(lazy.module), lazy.attribute)
    assert isinstance(command, click.Command)
    return command


def add_builtin_commands(cli: click.Group) -> None:
    for name in LAZY_COMMANDS:
        if name not in cli.commands:
            cli.add_command(load_command(name))
