"""The result table of `imgxfer run --task segment|detect`."""

from __future__ import annotations

from typing import Any


def result_rows(metrics: Any) -> tuple[list[str], list[list[str]]]:
    """The columns and one row per adapter of a dense run's result table."""
    from imgxfer.tasks.dense.evaluate import COLUMNS

    columns = COLUMNS[metrics.task]
    rows = [[name, *[f"{m[key]:.4f}" for key, _ in columns]]
            for name, m in metrics.adapters.items()]
    return ["adapter", *[label for _, label in columns]], rows
