"""Segmentation and detection transfer on the embedded digit scenes: every dense adapter
against source-only and the target oracle, per (task, labelled target scenes, seed).

    python benchmarks/dense.py --task segment --shots 0,1,5 --seeds 0,1,2 \
        --out benchmarks/results/dense.jsonl
    # the same with the source scenes' colours randomised (rows "METHOD+style")
    python benchmarks/dense.py --task segment --shots 0 --seeds 0,1,2 --augment style \
        --kinds compare,translate --methods source-only,finetune,self-training \
        --out benchmarks/results/dense.jsonl

One cell is one ``imgxfer run --task T --compare ...`` (the source model is trained
once per cell and every adapter starts from a copy of it, on the same split), plus:

- ``translate`` (0 labels): the same run with ``--generator gan --synthesis translate``
  and the adapter ``finetune`` (translated source scenes with their masks and boxes,
  AdaBN); ``translate:ADAPTER`` the same with another adapter;
- ``oracle``: ``target-only`` with every non-test target scene labelled.

With labelled target scenes (``--shots`` above 0) only the methods that read them run
again (``LABELLED_METHODS``).

Settings (steps, widths, adapter options) are the script's arguments, chosen on
``--pair syndigits:mnist`` scenes and reported unchanged on ``syndigits:mnist-m``;
test labels are used for the reported numbers only. With --out, every finished cell is
appended at once and a rerun skips the cells there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import cell, read_rows

from imgxfer.core.config import RunConfig
from imgxfer.plugin.host import get_registry
from imgxfer.tasks import run

METHODS = {"segment": "source-only,adabn,finetune,self-training,advent,adaptsegnet",
           "detect": "source-only,adabn,finetune,self-training"}
# With labelled target scenes only the methods that use them are run again (source-only
# and adabn do not read them; the oracle is the ceiling).
LABELLED_METHODS = "finetune,self-training,target-only"


def config_for(args: argparse.Namespace, task: str, shots: int, seed: int, kind: str,
               out: str) -> RunConfig:
    source, target = args.pair.split(":")
    config = RunConfig(task=task, source=f"digit-scenes:{source}",
                       target=f"digit-scenes:{target}", shots=shots, seed=seed,
                       encoder_steps=args.source_steps, adapter_steps=args.adapter_steps,
                       generator="none", out=out, augment=args.augment,
                       compare=(args.methods or (METHODS[task] if shots == 0 else
                                                 LABELLED_METHODS)).split(","))
    config.options["encoder"] = {"width": args.width}
    config.options["source"] = config.options["target"] = {"n": args.scenes}
    if kind.startswith("translate"):
        adapter = kind.partition(":")[2] or "finetune"
        config.generator, config.synthesis, config.compare = "gan", "translate", [adapter]
        config.generator_steps = args.generator_steps
        config.options["generator"] = {"width": 16, "batch_size": 32,
                                       "image_size": args.generator_size}
    elif kind == "oracle":
        test = max(1, round(args.scenes * config.test_fraction))
        config.shots, config.compare = args.scenes - test - 1, ["target-only"]
    return config.for_task()


def run_cell(args: argparse.Namespace, task: str, shots: int, seed: int, kind: str
             ) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = run(config_for(args, task, shots, seed, kind, out), get_registry())
        seconds = time.perf_counter() - started
    metrics = result.metrics
    styled = "+style" if result.config.augment == "style" else ""
    rows = []
    for name, scores in metrics.adapters.items():
        method = (f"translate+{name}" if kind.startswith("translate") else
                  "oracle" if kind == "oracle" else name) + styled
        rows.append({"pair": args.pair, "task": task, "shots": shots, "seed": seed,
                     "method": method, "kind": kind, "augment": args.augment,
                     "run_seconds": round(seconds, 1),
                     "source_val": metrics.model["source_val"],
                     **{k: v for k, v in scores.items() if not isinstance(v, dict)},
                     "per_class": scores.get("iou", scores.get("ap"))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="segment")
    parser.add_argument("--pair", default="syndigits:mnist-m")
    parser.add_argument("--shots", default="0,1,5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kinds", default="compare,translate,oracle")
    parser.add_argument("--methods", default="",
                        help="Adapters of the compare cells instead of the task's list.")
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--source-steps", type=int, default=300)
    parser.add_argument("--adapter-steps", type=int, default=150)
    parser.add_argument("--generator-steps", type=int, default=600)
    # The GAN's translator at 64 px takes 1.3 s a step on one core (0.35 s at 32 px):
    # translated scenes are made at this size and resized to the scenes'.
    parser.add_argument("--generator-size", type=int, default=32)
    # "": each component's own, as the cells before --augment reached dense runs (the
    # translator's critic then shifts images); style: the labelled scenes' colours
    # randomised. The run's auto is not used, so that a row says what it measured.
    parser.add_argument("--augment", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table-only", action="store_true",
                        help="Print the tables of --out and stop.")
    parser.add_argument("--paired", default="",
                        help="With --table-only: A,B prints method B minus method A, seed "
                             "by seed, at 0 labels.")
    args = parser.parse_args()
    if args.paired and len(args.paired.split(",")) != 2:
        parser.error("--paired takes two method names, A,B")
    if args.table_only:
        rows = read_rows(args.out)
        for task in ("segment", "detect"):
            print(f"\n{task}\n" + table(rows, args.pair, task) + "\n\n"
                  + gap_table(rows, args.pair, task))
            if args.paired:
                print("\n" + paired_table(rows, args.pair, task, *args.paired.split(",")))
        return
    torch.set_num_threads(args.threads)
    done = {(r["pair"], r["task"], r["shots"], r["seed"], r["kind"], r.get("augment", ""))
            for r in (read_rows(args.out) if args.out else [])}
    shots = list(map(int, args.shots.split(",")))
    kinds = args.kinds.split(",")
    # Every seed of the 0-label cells first: the goal is measured there.
    cells = [(kind, s) for s in shots for kind in kinds
             if (kind == "compare" or s == 0)]
    for kind, shot in cells:
        for seed in map(int, args.seeds.split(",")):
            if (args.pair, args.task, shot, seed, kind, args.augment) in done:
                continue
            rows = run_cell(args, args.task, shot, seed, kind)
            print(json.dumps([{k: r[k] for k in ("method", "shots", "seed")} |
                              {"score": r.get("miou", r.get("map_50"))} for r in rows]),
                  flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.out:
        print(table(read_rows(args.out), args.pair, args.task))


def table(rows: list[dict], pair: str, task: str) -> str:
    """Mean ± std over seeds per method and shots (the oracle in every column)."""
    key = "miou" if task == "segment" else "map_50"
    rows = [r for r in rows if r["pair"] == pair and r["task"] == task]
    shots = sorted({r["shots"] for r in rows if r["kind"] != "oracle"})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"| method | {' | '.join(f'{s} labelled' for s in shots)} |",
             "|---|" + "---|" * len(shots)]
    for method in methods:
        cells = []
        for s in shots:
            values = [r[key] for r in rows if r["method"] == method
                      and (r["shots"] == s or method == "oracle")]
            cells.append(cell(values) if values else "-")
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def gap_table(rows: list[dict], pair: str, task: str) -> str:
    """At 0 labels, per seed: how much of the gap between source-only and the oracle
    each method closes, ``(method - source-only) / (oracle - source-only)``, mean ±
    std over seeds, and its paired difference to source-only."""
    rows = [r for r in rows if r["pair"] == pair and r["task"] == task and r["shots"] == 0]
    by = scores_at_zero(rows, pair, task)
    seeds = sorted({r["seed"] for r in rows if (("oracle", r["seed"]) in by
                                                and ("source-only", r["seed"]) in by)})
    lines = ["| method (0 labels) | minus source-only | share of the gap closed | seeds |",
             "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        if method in ("source-only", "oracle"):
            continue
        have = [s for s in seeds if (method, s) in by]
        if not have:
            continue
        delta = [by[method, s] - by["source-only", s] for s in have]
        share = [d / (by["oracle", s] - by["source-only", s]) for d, s in zip(delta, have, strict=True)]
        lines.append(f"| {method} | {cell(delta, signed=True)} | {cell(share, signed=True)} "
                     f"| {len(have)} |")
    return "\n".join(lines)


def scores_at_zero(rows: list[dict], pair: str, task: str) -> dict[tuple[str, int], float]:
    """(method, seed) -> the task's headline score (mIoU or mAP@0.5) at 0 labels."""
    key = "miou" if task == "segment" else "map_50"
    return {(r["method"], r["seed"]): r[key] for r in rows
            if r["pair"] == pair and r["task"] == task and r["shots"] == 0}


def paired_table(rows: list[dict], pair: str, task: str, before: str, after: str) -> str:
    """``after`` minus ``before`` at 0 labels on the seeds both ran (the same split and
    seeded source model), each seed's difference and their mean ± std."""
    by = scores_at_zero(rows, pair, task)
    seeds = sorted(s for m, s in by if m == after and (before, s) in by)
    delta = [by[after, s] - by[before, s] for s in seeds]
    if not delta:
        return f"({after} and {before}: no seed in common)"
    per_seed = ", ".join(f"{d:+.3f}" for d in delta)
    return (f"| {after} minus {before} | per seed ({', '.join(map(str, seeds))}) | better |\n"
            f"|---|---|---|\n| {cell(delta, signed=True)} | {per_seed} | "
            f"{sum(d > 0 for d in delta)}/{len(delta)} |")


if __name__ == "__main__":
    main()
