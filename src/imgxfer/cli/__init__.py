"""The command line: the ``imgxfer`` group (:mod:`imgxfer.cli.app`) and one module per
command. Every command is a thin layer over functions importable from Python."""

from imgxfer.cli.app import cli, main

__all__ = ["cli", "main"]
