"""`imgxfer run --task segment|detect`: run the dense chain (the CLI prints its table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgxfer.errors import UserError


def run_dense(config: Any, registry: Any, progress: Any, *, seeds: list[int] | None,
              resume: Path | None) -> Any:
    """The finished run (:class:`imgxfer.pipeline.RunResult`); ``--seeds`` is refused."""
    from imgxfer.pipeline import execute, plan_for

    if seeds is not None:
        raise UserError(f"--seeds is for --task classify; run --task {config.task} once per "
                        "--seed (benchmarks/dense.py does, and reports mean ± std).")
    return execute(plan_for(config, registry), progress=progress, folder=resume,
                   resume=resume is not None)


def result_rows(metrics: Any) -> tuple[list[str], list[list[str]]]:
    """The columns and one row per adapter of a dense run's result table."""
    from imgxfer.dense.evaluate import COLUMNS

    columns = COLUMNS[metrics.task]
    rows = [[name, *[f"{m[key]:.4f}" for key, _ in columns]]
            for name, m in metrics.adapters.items()]
    return ["adapter", *[label for _, label in columns]], rows
