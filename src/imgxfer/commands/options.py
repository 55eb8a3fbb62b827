"""Options that `imgxfer caption` and `imgxfer predict` share: both read images from a
dataset or files and write one output file, so they take these the same way."""

from __future__ import annotations

import click


def out_option(help: str):
    return click.option("--out", "-o", metavar="FILE_OR_DIR", help=help)


def limit_option(verb: str):
    return click.option("--limit", type=int, metavar="N", help=f"{verb} only the first N images.")


dataset_opt_option = click.option(
    "--dataset-opt", multiple=True, metavar="KEY=VALUE",
    help="Option for the dataset or for reading files, e.g. size=64 (repeatable).")

force_option = click.option("--force", is_flag=True,
                            help="Overwrite the output file if it exists.")
