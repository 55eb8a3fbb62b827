"""Do synthetic images help? Paired deltas (with - without the synthetic images; same
split, seed and source-trained encoder) per generator x synthesis mode, adapter, pair and
shot count, over seeds; plus the adapters alone and a target oracle, so each delta has
its baseline.

    cd benchmarks && python synthesis.py --pairs mnist:mnist-m --shots 0 \\
        --synthesis gan:translate --adapters finetune,self-training --seeds 0,1,2,3,4
    python synthesis.py --pairs mnist:mnist-m --shots 0 --baselines \\
        --adapters source-only,dann,mmd,cdan,self-training --seeds 0,1,2,3,4
    python synthesis.py --pairs mnist:mnist-m --oracle --seeds 0,1,2,3,4
    python synthesis.py --table-only

Each (cell, seed) is one ``imgxfer run --compare-synthetic`` run folder,
``results/synthesis/<cell>/seed-<k>/`` (config.toml and metrics.json are kept in git); a
rerun reads finished folders back and runs only the missing ones, so the grid can be
filled over several sessions. The oracle is ``target-only`` trained on every target
training image (the test split is the same as everywhere). Target test labels are used
for the reported numbers only; no setting here is chosen on them.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from common import (
    PLAIN,
    TABLE_ADAPTER_STEPS,
    TABLE_ENCODER_STEPS,
    TABLE_GENERATOR_STEPS,
    cell,
    run_once,
)

from imgxfer.core.config import RunConfig, parse_option
from imgxfer.run.metrics import RunMetrics

ROOT = Path(__file__).parent / "results" / "synthesis"


def configs(args: argparse.Namespace) -> list[tuple[str, RunConfig]]:
    """(cell name, config) for every run asked for, seeds included."""
    adapters = [a for a in args.adapters.split(",") if a]
    common = dict(encoder_steps=TABLE_ENCODER_STEPS, generator_steps=args.generator_steps,
                  adapter_steps=args.adapter_steps,
                  synthetic_per_class=args.synthetic_per_class, device=args.device)
    out: list[tuple[str, RunConfig]] = []
    for pair in args.pairs.split(","):
        source, target = pair.split(":")
        base = dict(source=source, target=target, **common)
        cells: list[tuple[str, dict]] = []
        if args.oracle:
            # Every target training image labelled: 250 per class minus the test share
            # for mnist-m; few_shot_split names the largest possible count if it is less.
            cells.append((f"{source}-{target}-oracle",
                          dict(shots=args.oracle_shots, generator="none",
                               compare=["target-only", "finetune"])))
        for shots in [int(s) for s in args.shots.split(",") if s]:
            if args.baselines:
                cells.append((f"{source}-{target}-{shots}shot-adapters",
                               dict(shots=shots, generator="none", compare=adapters)))
            for spec in [s for s in args.synthesis.split(",") if s]:
                generator, mode = spec.split(":")
                cells.append((f"{source}-{target}-{shots}shot-{generator}-{mode}{args.tag}",
                              dict(shots=shots, generator=generator, synthesis=mode,
                                   compare=adapters, compare_synthetic=True,
                                   options=options(args))))
        for name, extra in cells:
            for seed in [int(s) for s in args.seeds.split(",")]:
                out.append((name, RunConfig(name=name, seed=seed, out="results/synthesis",
                                            augment=PLAIN, **{**base, **extra})))
    return out


def options(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The run's component options with ``--generator-option KEY=VALUE``s, read as the
    CLI's ``--generator-opt`` reads them."""
    generator = dict(parse_option(pair, "--generator-option") for pair in args.generator_option)
    return {**RunConfig().options, "generator": generator}


def table(root: Path) -> str:
    """Markdown tables from every finished run folder under ``root``."""
    runs: dict[str, list[RunMetrics]] = defaultdict(list)
    for path in sorted(root.glob("*/seed-*/metrics.json")):
        runs[path.parent.parent.name].append(RunMetrics.read(path))
    lines = ["| cell | adapter | seeds | with synthetic | without | paired delta | delta > 0 |",
             "|---|---|---|---|---|---|---|"]
    quality = ["| cell | seeds | CAS | CAS real | label kept | FID (real floor) | nearest is a shot (real) |",
               "|---|---|---|---|---|---|---|"]
    for name, metrics in runs.items():
        for adapter in metrics[0].adapters:
            acc = [m.adapters[adapter].accuracy for m in metrics]
            deltas = [m.synthetic_delta[adapter] for m in metrics if m.synthetic_delta]
            if len(deltas) == len(metrics):
                d = [r.delta for r in deltas]
                lines.append(f"| {name} | {adapter} | {len(metrics)} | {cell(acc)} | "
                             f"{cell([r.without for r in deltas])} | {cell(d, signed=True)} | "
                             f"{sum(x > 0 for x in d)}/{len(d)} |")
            else:
                lines.append(f"| {name} | {adapter} | {len(metrics)} | – | {cell(acc)} | – | – |")
        gens = [m.generator for m in metrics if m.generator and m.generator.cas is not None]
        if gens:
            def col(key: str, gens: list = gens) -> list[float]:
                return [getattr(g, key) for g in gens if getattr(g, key) is not None]
            shot = (f"{cell(col('nearest_shot'))} ({cell(col('nearest_shot_real'))})"
                    if col("nearest_shot") else "–")
            quality.append(f"| {name} | {len(gens)} | {cell(col('cas'))} | "
                           f"{cell(col('cas_real'))} | {cell(col('label_kept'))} | "
                           f"{cell(col('fid'), 2)} ({cell(col('fid_real'), 2)}) | {shot} |")
    return "\n".join(lines) + "\n\n" + "\n".join(quality)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="mnist:mnist-m")
    ap.add_argument("--shots", default="0")
    ap.add_argument("--synthesis", default="",
                    help="comma list of GENERATOR:MODE, e.g. gan:translate,diffusion:shots")
    ap.add_argument("--adapters", default="finetune,self-training")
    ap.add_argument("--baselines", action="store_true",
                    help="also the adapters alone (--generator none)")
    ap.add_argument("--oracle", action="store_true", help="also target-only on all target labels")
    ap.add_argument("--oracle-shots", type=int, default=175)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--generator-steps", type=int, default=TABLE_GENERATOR_STEPS)
    ap.add_argument("--adapter-steps", type=int, default=TABLE_ADAPTER_STEPS)
    ap.add_argument("--synthetic-per-class", type=int, default=RunConfig.synthetic_per_class)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly: "
                    "two benchmarks with default threads on 2 cores run up to 10x slower)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a generator option for the synthesis cells (give --tag too), e.g. "
                    "semantic_weight=1.0")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the synthesis cells' names, for an "
                    "ablation of the same cell (e.g. -g6000 for --generator-steps 6000)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, config in [] if args.table_only else configs(args):
        metrics, ran = run_once(config, ROOT / name / f"seed-{config.seed}")
        print(f"{name} seed {config.seed}: " + ", ".join(
            f"{a} {r.accuracy:.3f}" for a, r in metrics.adapters.items())
            + (" (ran now)" if ran else ""), flush=True)
    print(table(ROOT))


if __name__ == "__main__":
    main()
