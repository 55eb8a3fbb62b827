"""What the benchmark drivers share: mean ± std over seeds, and run folders that a rerun
resumes (a finished folder is read back, an interrupted one is run again)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from imgxfer.core.config import RunConfig, load_saved, same_run
from imgxfer.plugin.host import get_registry
from imgxfer.run.metrics import RunMetrics
from imgxfer.tasks import run

# The budget the documented tables were measured with (imgxfer run's defaults until issue
# 15 shortened them for the default run): the scripts keep it, so their tables reproduce.
TABLE_ENCODER_STEPS = 500
TABLE_ADAPTER_STEPS = 400
# ... and the generator's 1,500 steps of every mode (issue 26 gave translation 300 by
# default; the synthesis tables keep 1,500 so that they reproduce).
TABLE_GENERATOR_STEPS = 1500


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cell(values: list[float], digits: int = 3, signed: bool = False) -> str:
    """``mean ± std`` for a table cell (``signed``: the mean with its sign, for deltas);
    "–" when there is nothing."""
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:{'+' if signed else ''}.{digits}f} ± {s:.{digits}f}"


# The augmentation of every cell before --augment auto became the default: each
# component's own policy. Scripts whose cells measure a fixed setting pin it, so that their
# committed folders stay the same runs (auto would choose style for a grey source and a
# colour target).
PLAIN = ""


def run_once(config: RunConfig, folder: Path) -> tuple[RunMetrics, bool]:
    """Run ``config`` into ``folder`` unless an earlier invocation finished it there; returns
    the run's metrics and whether it ran now. A finished folder made with other settings
    stops the script (give another output folder); an unfinished one is this script's own
    interrupted run and is started again."""
    done = folder / "metrics.json"
    if done.is_file():
        # Keys added to RunConfig since a folder was written load as that run had them.
        if not same_run(load_saved(folder / "config.toml"), config):
            raise SystemExit(f"{folder} was run with other settings; give another output folder.")
        return RunMetrics.read(done), False
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return run(config, get_registry(), folder=folder).metrics, True


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
