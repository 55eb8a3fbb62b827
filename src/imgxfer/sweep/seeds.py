"""``imgxfer run --seeds``: the same config under several seeds, one run folder each,
and ``summary.json`` with mean ± sample std over seeds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from imgxfer.core import runfolder
from imgxfer.core.config import RunConfig, check_seed
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.core.runfolder import atomic_write_json, create_run_dir
from imgxfer.plugin.registry import Registry
from imgxfer.run.execute import RunResult, execute
from imgxfer.run.metrics import AdapterMetrics, RunMetrics, SyntheticDelta
from imgxfer.run.tracking import open_tracker
from imgxfer.tasks import prepare

# Generator quality fields summarised over seeds.
QUALITY = ("cas", "cas_real", "label_kept", "fid", "kid_mean", "fid_real", "kid_real_mean")


@dataclass
class SeedsResult:
    folder: Path
    runs: list[RunResult]
    summary: dict[str, dict[str, float]]  # adapter -> accuracy/macro_f1 mean and std
    # adapter -> with/without/delta mean and std (runs with --compare-synthetic)
    synthetic_delta: dict[str, dict[str, float]] = field(default_factory=dict)
    generator: dict[str, float] = field(default_factory=dict)  # quality metrics mean and std

    def payload(self, seeds: list[int]) -> dict[str, Any]:
        """What summary.json holds."""
        out: dict[str, Any] = {"seeds": seeds, "adapters": self.summary}
        if self.synthetic_delta:
            out["synthetic_delta"] = self.synthetic_delta
        if self.generator:
            out["generator"] = self.generator
        return out


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _numbers(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) for v in values)


def summarise(runs: list[RunMetrics]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds, per adapter, then per baseline
    (named "<baseline> (baseline)", e.g. the source model) where every run has it."""
    groups = [(name, [r.adapters[name] for r in runs]) for name in runs[0].adapters]
    if all(r.baselines for r in runs):
        groups += [(f"{name} (baseline)",
                    [cast("dict[str, AdapterMetrics]", r.baselines)[name] for r in runs])
                   for name in runs[0].baselines or {}]
    summary: dict[str, dict[str, float]] = {}
    for name, records in groups:
        row: dict[str, float] = {"seeds": len(runs)}
        for key in ("accuracy", "macro_f1", "unlabelled_im", "train_seconds"):
            values = [getattr(record, key) for record in records]
            if _numbers(values):  # IM needs unlabelled images
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        summary[name] = row
    return summary


def summarise_synthetic(runs: list[RunMetrics]
                        ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Mean and sample standard deviation over seeds of the synthetic delta (per adapter:
    ``with``, ``without``, ``delta``) and of the generator quality metrics; empty when
    the runs have none."""
    delta: dict[str, dict[str, float]] = {}
    if all(r.synthetic_delta is not None for r in runs):
        for name in runs[0].synthetic_delta or {}:
            row: dict[str, float] = {"seeds": len(runs)}
            for key in ("with", "without", "delta"):
                values = [cast("dict[str, SyntheticDelta]", r.synthetic_delta)[name]
                          .to_json()[key] for r in runs]
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            delta[name] = row
    generator: dict[str, float] = {}
    for key in QUALITY:
        values = [getattr(r.generator, key) if r.generator else None for r in runs]
        if _numbers(values):
            generator[f"{key}_mean"], generator[f"{key}_std"] = mean_std(values)
    return delta, generator


def run_seeds(config: RunConfig, seeds: list[int], registry: Registry, *,
              progress: Progress = NullProgress()) -> SeedsResult:
    """``<out>/<stamp>-<name>/seed-<k>/`` run folders plus ``summary.json`` with mean ±
    std per adapter (and of the synthetic delta and generator quality when the runs have
    them)."""
    if config.task != "classify":  # its summary is of classification metrics
        raise UserError(f"--seeds is for --task classify; run --task {config.task} once per "
                        "--seed (benchmarks/dense.py does, and reports mean ± std).")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct seeds, got {seeds!r}.")
    for seed in seeds:  # every seed before the parent folder is created
        check_seed(seed, "each of --seeds")
    plans = [prepare(replace(config, seed=seeds[0]), registry)]  # checks input first
    tracker = open_tracker(config)  # and the tracker's package and location, once
    parent = create_run_dir(config.out, config.name)
    runs = []
    for i, seed in enumerate(seeds):
        plan = plans[0] if i == 0 else prepare(replace(config, seed=seed), registry)
        progress.log(f"seed {seed} ({i + 1}/{len(seeds)})")
        runs.append(execute(plan, progress=progress,
                            folder=parent / runfolder.seed_folder(seed), tracker=tracker))
    metrics = [r.metrics for r in runs]
    result = SeedsResult(parent, runs, summarise(metrics), *summarise_synthetic(metrics))
    atomic_write_json(parent / runfolder.SUMMARY, result.payload(seeds))
    return result
