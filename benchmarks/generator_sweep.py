"""Sweep one option of the generator and measure its target-domain images: CAS (a fixed
small classifier trained on them only, tested on the real target test split) and shot
copying (how often an image's nearest real target image of its class is a labelled shot;
see :mod:`imgxfer.tasks.classify.quality`), mean ± std over seeds.

    python benchmarks/generator_sweep.py --pair syndigits:digits --shots 1 \\
        --option cdc --values 0,5,20 --seeds 0,1,2 --out-dir benchmarks/results/gan-cdc

Each cell is one ordinary run of the pipeline (:func:`imgxfer.tasks.run`) with the GAN
at its default step budget. The encoder and adapter get one step each: neither CAS nor
shot copying depends on them (FID/KID, which do, are left out of the table), so a cell
costs about the GAN's training. A cell whose ``metrics.json`` exists is not run again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import PLAIN, cell, run_once

from imgxfer.core.config import RunConfig, parse_option

KEYS = ("cas", "cas_real", "nearest_shot", "nearest_shot_real")


def run_cell(args: argparse.Namespace, value: object, seed: int) -> dict:
    source, target = args.pair.split(":")
    folder = Path(args.out_dir) / f"{args.option}={value}" / f"seed-{seed}"
    config = RunConfig(name=f"{args.option}={value}", source=source, target=target,
                       shots=args.shots, seed=seed, generator="gan", adapter="source-only",
                       encoder_steps=1, adapter_steps=1, out=str(folder.parent),
                       augment=PLAIN)
    config.options["generator"] = {args.option: value}
    metrics, ran = run_once(config, folder)
    gen = metrics.generator.to_json()
    if ran:
        print(f"{args.option}={value} seed={seed}: " + "  ".join(f"{k} {gen[k]:.3f}" for k in KEYS),
              flush=True)
    return gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="syndigits:digits")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--option", required=True, help="a gan option, e.g. cdc")
    ap.add_argument("--values", required=True, help="comma list of values")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    values = [parse_option(f"v={v}", "--values")[1] for v in args.values.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [f"| {args.option} | seeds | CAS | CAS real | synthetic: nearest real is a shot | "
             "real held-out: nearest real is a shot |", "|---|---|---|---|---|---|"]
    for value in values:
        gens = [run_cell(args, value, seed) for seed in seeds]
        cells = [cell([g[key] for g in gens]) for key in KEYS]
        lines.append(f"| {value} | {len(gens)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (Path(args.out_dir) / "results.md").write_text(table)
    print("\n" + table, end="")


if __name__ == "__main__":
    main()
