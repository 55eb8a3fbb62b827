"""What the CLI's tables and progress lines look like at 80 columns (issue 29, item 10)."""

from __future__ import annotations

import io

from rich.console import Console

from imgxfer.cli import _table

PATH = "folder:/data/scans/clinic-2024/second-camera/target-images"


def _printed(renderable, width: int = 80) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False).print(renderable)
    return buffer.getvalue().splitlines()


def test_a_path_in_a_table_title_stays_whole():
    console = Console(width=80)
    lines = _printed(_table(f"target test split: {PATH} (27 images)", ["metric", "value"],
                            [["accuracy", "0.9"]], console))
    assert any(PATH in line for line in lines), lines
    assert all(len(line) <= 80 for line in lines)
