"""The default run's step budget (issue 15): accuracy and wall clock of `imgxfer run`'s
defaults against shorter budgets, chosen on syndigits -> mnist (10 shots, where the
target's test labels of the default pair syndigits -> digits are not looked at) and then
reported unchanged on the default pair.

    python benchmarks/default_budget.py --pair syndigits:mnist --seeds 0,1,2 --threads 1
    python benchmarks/default_budget.py --pair syndigits:digits --seeds 0 --threads 2 \
        --budgets old,new   # the default run itself, timed on an idle machine

Each budget is ENCODER/GENERATOR/ADAPTER steps (plus quality steps); every cell is an
ordinary run folder under benchmarks/results/default_budget/, resumed cell by cell.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import PLAIN, cell, run_once

from imgxfer.core.config import RunConfig

ROOT = Path(__file__).parent / "results" / "default_budget"
# name -> (encoder_steps, generator_steps, adapter_steps)
BUDGETS = {"old": (500, 1500, 400), "e300-a250": (300, 1500, 250), "e300-a200": (300, 1500, 200),
           "e200-a250": (200, 1500, 250),
           "e300-g1000-a250": (300, 1000, 250), "e250-g1200-a200": (250, 1200, 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="syndigits:mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source, target = args.pair.split(":")
    rows = []
    for name in args.budgets.split(","):
        if name == "new":  # whatever the defaults are now
            enc, gen, ada = (RunConfig.encoder_steps, RunConfig.generator_steps,
                             RunConfig.adapter_steps)
        elif name in BUDGETS:
            enc, gen, ada = BUDGETS[name]
        else:
            ap.error(f"unknown budget {name!r}; known: new, {', '.join(BUDGETS)}")
        acc, cas, wall = [], [], []
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = RunConfig(name=f"{source}-{target}-{name}", source=source, target=target,
                               seed=seed, encoder_steps=enc, generator_steps=gen,
                               adapter_steps=ada, out=str(ROOT), augment=PLAIN)
            t0 = time.perf_counter()
            metrics, ran = run_once(config, ROOT / f"{source}-{target}-{name}" / f"seed-{seed}")
            acc.append(metrics.target.accuracy)
            cas.append(metrics.generator.cas)
            wall.append(sum(metrics.timings_s.values()))
            print(f"{name} seed {seed}: accuracy {acc[-1]:.4f}, CAS {cas[-1]:.4f}, stages "
                  f"{wall[-1]:.0f} s" + (f", command {time.perf_counter() - t0:.0f} s" if ran
                                         else " (done earlier)"), flush=True)
        rows.append(f"| {args.pair} | {name} ({enc}/{gen}/{ada}) | {len(acc)} | {cell(acc, 4)} | "
                    f"{cell(cas, 4)} | {cell(wall, 0)} |")
    print("| pair | budget (encoder/GAN/adapter steps) | seeds | accuracy | CAS | stage seconds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
