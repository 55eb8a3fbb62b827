"""What the benchmark drivers share: mean ± std over seeds, and run folders that a rerun
resumes (a finished folder is read back, an interrupted one is run again)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imgxfer.config import RunConfig, load
from imgxfer.pipeline import run


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


def same_settings(saved: RunConfig, asked: RunConfig) -> bool:
    """Whether a finished run's config is ``asked``, apart from the options the run
    resolved itself (smallcnn's auto ``in_channels``); keys added to RunConfig since then
    load with their defaults."""
    saved_encoder = dict(saved.options.get("encoder", {}))
    if "in_channels" not in asked.options.get("encoder", {}):
        saved_encoder.pop("in_channels", None)
    return replace(saved, options={**saved.options, "encoder": saved_encoder}) == asked


def run_once(config: RunConfig, folder: Path) -> tuple[dict[str, Any], bool]:
    """Run ``config`` into ``folder`` unless an earlier invocation finished it there; returns
    the run's metrics and whether it ran now. A finished folder made with other settings
    stops the script (give another output folder); an unfinished one is this script's own
    interrupted run and is started again."""
    done = folder / "metrics.json"
    if done.is_file():
        if not same_settings(load(folder / "config.toml"), config):
            raise SystemExit(f"{folder} was run with other settings; give another output folder.")
        return json.loads(done.read_text()), False
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return run(config, folder=folder).metrics, True
