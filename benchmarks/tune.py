"""`imgxfer tune` (issue 16, part 3): does a small Optuna search, scored without the test
split, beat the defaults on it? syndigits -> digits, finetune, no generator, at 1 shot
(the IM objective) and 5 shots (3-fold CV over the shots), 3 seeds; each tuned config and
the default config are then run as ordinary runs and compared on the test split.

    taskset -c 1 python benchmarks/tune.py --seeds 0,1,2 --threads 1
    python benchmarks/tune.py --table-only

finetune is the default adapter and the cheapest trained one (no unlabelled forward
pass per step), so a one-core budget holds the most trials. The run's budget is
shortened (ADAPTER_STEPS) for the same reason, for default and tuned alike, and the
search covers finetune's four declared options (PARAMS) but not the step count, so tuned
and default runs cost the same. The search stops at its trial count or its time
(SEARCH), whichever comes first. One line per (shots, seed) is appended to --out; a
rerun skips the lines already there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from common import PLAIN, cell, read_rows, run_once

from imgxfer.core.config import RunConfig
from imgxfer.plugin.host import get_registry

ROOT = Path(__file__).parent / "results" / "tune"
ADAPTER_STEPS = 60
PARAMS = ["adapter.lr", "adapter.encoder_lr_scale", "adapter.source_weight",
          "adapter.target_weight"]
# shots -> (trials, timeout seconds, folds): the budget of each search on one core.
SEARCH = {1: (12, 120, None), 5: (12, 180, 3)}


def base_config(shots: int, seed: int) -> RunConfig:
    return RunConfig(name=f"tune-bench-{shots}shot", shots=shots, seed=seed, generator="none",
                     adapter="finetune", adapter_steps=ADAPTER_STEPS, device="cpu",
                     out=str(ROOT / f"{shots}shot-search" / f"seed-{seed}"), augment=PLAIN)


def measure(shots: int, seed: int) -> dict[str, Any]:
    from imgxfer.sweep.tune import tune

    trials, timeout, folds = SEARCH[shots]
    config = base_config(shots, seed)
    t0 = time.perf_counter()
    result = tune(config, get_registry(), n_trials=trials, timeout=timeout, folds=folds,
                  params=PARAMS)
    tune_s = time.perf_counter() - t0
    study = result.study.study
    states = [t.state.name for t in study.trials]
    # Run folders as the other scripts lay them out (<cell>/seed-K; git keeps their
    # config.toml and metrics.json), the search beside them.
    default, _ = run_once(config, ROOT / f"{shots}shot-default" / f"seed-{seed}")
    tuned, _ = run_once(result.best, ROOT / f"{shots}shot-tuned" / f"seed-{seed}")
    return {"shots": shots, "seed": seed, "objective": result.objective.label,
            "trials": len(states), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "best_value": study.best_value,
            "start_value": next((t.value for t in study.trials if t.user_attrs.get("start")),
                                None),
            "best_params": study.best_trial.params, "tune_s": round(tune_s, 1),
            "default_accuracy": default.target.accuracy, "tuned_accuracy": tuned.target.accuracy,
            "adapter_steps": ADAPTER_STEPS, "search": SEARCH[shots],
            "tune_folder": str(result.folder)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shots | objective (no test labels) | seeds | trials (pruned) | objective: "
             "start → best | test acc. default | test acc. tuned | paired delta | tuned better |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shots in sorted({r["shots"] for r in rows}):
        rs = sorted((r for r in rows if r["shots"] == shots), key=lambda r: r["seed"])
        deltas = [r["tuned_accuracy"] - r["default_accuracy"] for r in rs]
        lines.append(
            f"| {shots} | {rs[0]['objective']} | {len(rs)} | "
            f"{sum(r['trials'] for r in rs) / len(rs):.1f} "
            f"({sum(r['pruned'] for r in rs) / len(rs):.1f}) | "
            f"{cell([r['start_value'] for r in rs])} → {cell([r['best_value'] for r in rs])} | "
            f"{cell([r['default_accuracy'] for r in rs])} | "
            f"{cell([r['tuned_accuracy'] for r in rs])} | {cell(deltas, signed=True)} | "
            f"{sum(d > 0 for d in deltas)}/{len(deltas)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly)")
    ap.add_argument("--out", default="benchmarks/results/tune.jsonl")
    ap.add_argument("--table-only", action="store_true",
                    help="print the table of the lines in --out and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out)
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        for seed in seeds:
            for k in shots:
                if any(r["shots"] == k and r["seed"] == seed for r in read_rows(out)):
                    print(f"{k} shots, seed {seed}: already in {out}, skipped", flush=True)
                    continue
                row = measure(k, seed)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{k} shots, seed {seed}: {row['complete']}/{row['trials']} trials "
                      f"({row['tune_s']} s), default {row['default_accuracy']:.4f}, tuned "
                      f"{row['tuned_accuracy']:.4f}", flush=True)
    rows = [r for r in read_rows(out) if r["shots"] in shots and r["seed"] in seeds]
    print(table(rows))


if __name__ == "__main__":
    main()
