"""Options that `imgxfer caption`, `predict` and `explain` share: they read images from a
dataset or files and write their output, so they take these the same way; `predict` and
`explain` also read a run's classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])  # a command function, or a click command


def out_option(help: str) -> Callable[[F], F]:
    return click.option("--out", "-o", metavar="FILE_OR_DIR", help=help)


def limit_option(verb: str) -> Callable[[F], F]:
    return click.option("--limit", type=int, metavar="N", help=f"{verb} only the first N images.")


dataset_opt_option = click.option(
    "--dataset-opt", multiple=True, metavar="KEY=VALUE",
    help="Option for the dataset or for reading files, e.g. size=64 (repeatable).")

_FROM_RUN = (
    click.option("--from", "run", required=True, metavar="RUN_FOLDER_OR_FILE",
                 help="A run folder of `imgxfer run` (one seed's folder after --seeds), or a "
                      "classifier .safetensors file in one."),
    click.option("--adapter", metavar="NAME",
                 help="Which classifier of a --compare run (see its classifier-NAME files)."))


def from_run(f: F) -> F:
    """The ``--from RUN`` and ``--adapter NAME`` options of a command that loads a run's
    classifier."""
    for option in reversed(_FROM_RUN):
        f = option(f)
    return f


force_option = click.option("--force", is_flag=True,
                            help="Overwrite the output file if it exists.")
