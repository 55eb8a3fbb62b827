"""`imgxfer run --task segment|detect`: run the dense chain and print its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from imgxfer.errors import UserError


def run_dense(config: Any, registry: Any, progress: Any, *, seeds: list[int] | None,
              as_json: bool, resume: Path | None) -> None:
    from imgxfer.dense.evaluate import HEADLINE
    from imgxfer.pipeline import execute, plan_for
    from imgxfer.cli import _table, err
    from imgxfer.runfolder import REPORT

    if seeds is not None:
        raise UserError(f"--seeds is for --task classify; run --task {config.task} once per "
                        "--seed (benchmarks/dense.py does, and reports mean ± std).")
    result = execute(plan_for(config, registry), progress=progress, folder=resume,
                     resume=resume is not None)
    metrics = result.metrics
    key, label = HEADLINE[metrics.task]
    other = "pixel_accuracy" if metrics.task == "segment" else "map"
    rows = [[name, f"{m[key]:.4f}", f"{m[other]:.4f}"] for name, m in metrics.adapters.items()]
    err.print(_table(f"target test split: {config.target} ({metrics.data['target']['test']} "
                     "scenes)", ["adapter", label, "pixel accuracy" if other ==
                                 "pixel_accuracy" else "mAP@[.5:.95]"], rows, err,
                     whole=("adapter",)))
    folder = result.folder
    err.print(f"run folder: [bold]{folder}[/]  (open {folder / REPORT})", highlight=False,
              soft_wrap=True)
    what = "segment" if metrics.task == "segment" else "detect objects in"
    err.print(f"{what} new images: imgxfer predict IMAGES --from {folder}", highlight=False,
              soft_wrap=True)
    if as_json:
        click.echo(json.dumps(metrics.to_json(), indent=2))
