"""What the CLI's tables and progress lines look like at 80 columns (issue 29, item 10)."""

from __future__ import annotations

import io

from rich.console import Console

from imgxfer.cli.app import _table

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


def _progress_line(description: str, info: dict, done: int = 1500) -> str:
    import re

    from imgxfer.core.progress import RichProgress

    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    with RichProgress(console).task(description, 1500) as task:
        task.advance(done, **info)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buffer.getvalue()).replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-1]


def test_a_progress_line_fits_80_columns_whole():
    """The GAN's line ended in '1500/… 0:03:15 0:00:…': the count and the time are kept
    whole, the bar gives way, and only an overlong set of numbers is cut."""
    for description, info in [("generator: gan (translate)", {"loss": 0.7531, "d_loss": 1.234}),
                              ("adapter: finetune (without synthetic)", {"loss": 1.6})]:
        line = _progress_line(description, info)
        assert len(line) <= 80 and line.startswith(description) and "━" in line
        numbers = "  ".join(f"{k}={v:.3g}" for k, v in info.items())
        assert " 1500/1500 0:00:0" in line and line.endswith(numbers)
    long = _progress_line("adapter: finetune (without synthetic)",
                          {f"term{i}": 0.123 for i in range(6)}, done=700)
    assert len(long) <= 80 and " 700/1500 " in long and long.endswith("…")
