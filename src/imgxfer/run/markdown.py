"""Markdown tables, for model cards (imgxfer.run.modelcard) and TensorBoard's text
dashboard (imgxfer.run.trackers); free of torch, so a tracker's import stays light."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (a ``|`` inside a cell escaped), for model cards and TensorBoard's
    text dashboard."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
