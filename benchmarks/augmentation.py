"""Generative augmentation benchmark: target test accuracy with and without the GAN's
images, per (source -> target pair, shots, adapter), mean ± std over seeds, and whether
the difference exceeds one standard deviation of the paired differences.

    python benchmarks/augmentation.py --pairs syndigits:digits,mnist:digits \
        --shots 1,5,10 --seeds 0,1,2 --adapters finetune,mmd \
        --out-dir benchmarks/results/augmentation

Each (pair, shots, seed) is one ordinary `imgxfer run --compare finetune,mmd
--compare-synthetic` (the library call :func:`imgxfer.tasks.run`), so encoder,
captions, GAN, adapters and evaluation are exactly the CLI's: every adapter is trained
twice on the same split and encoder from the same random state, once with and once
without the synthetic images, and ``metrics.json`` holds ``synthetic_delta``. The run
folders stay under ``--out-dir``; a rerun skips those that finished (resumable), and
re-does those that were interrupted (a finished folder made with other settings stops
the script: use another ``--out-dir``). The generator quality of each run (CAS, FID/KID
in the run encoder's feature space) is summarised too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import PLAIN, TABLE_ADAPTER_STEPS, TABLE_ENCODER_STEPS, mean_std, run_once

from imgxfer.core.config import RunConfig


def run_one(args: argparse.Namespace, source: str, target: str, shots: int, seed: int,
            adapters: list[str]) -> dict[str, Any]:
    folder = Path(args.out_dir) / f"{source}-{target}-{shots}shot" / f"seed-{seed}"
    config = RunConfig(
        name=f"{source}-{target}-{shots}shot", source=source, target=target, shots=shots,
        seed=seed, compare=list(adapters), compare_synthetic=True, generator=args.generator,
        synthetic_per_class=args.synthetic_per_class, encoder_steps=args.encoder_steps,
        generator_steps=args.generator_steps, generator_time=args.generator_time,
        adapter_steps=args.adapter_steps, quality=not args.no_quality,
        synthetic_filter=args.synthetic_filter, device=args.device, out=str(folder.parent),
        augment=PLAIN)
    t0 = time.perf_counter()
    metrics, ran = run_once(config, folder)
    if not ran:
        print(f"{source}->{target} shots={shots} seed={seed}: done earlier ({folder})", flush=True)
        return metrics
    line = "  ".join(f"{a}: {d.without:.3f} -> {d.with_:.3f} ({d.delta:+.3f})"
                     for a, d in (metrics.synthetic_delta or {}).items())
    print(f"{source}->{target} shots={shots} seed={seed}: {line}  "
          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="syndigits:digits,mnist:digits")
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--adapters", default="finetune,mmd")
    ap.add_argument("--generator", default="gan")
    ap.add_argument("--synthetic-per-class", type=int, default=RunConfig.synthetic_per_class)
    ap.add_argument("--synthetic-filter", type=float, default=0.0,
                    help="keep synthetic images a source+shots probe gives p >= this")
    ap.add_argument("--encoder-steps", type=int, default=TABLE_ENCODER_STEPS)
    ap.add_argument("--generator-steps", type=int, default=RunConfig.generator_steps)
    ap.add_argument("--generator-time", default="", help="wall-clock cap per GAN, e.g. 3m")
    ap.add_argument("--adapter-steps", type=int, default=TABLE_ADAPTER_STEPS)
    ap.add_argument("--no-quality", action="store_true", help="skip CAS / FID / KID")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", default="benchmarks/results/augmentation",
                    help="run folders, results.json and results.md go here")
    args = ap.parse_args()
    adapters = [a for a in args.adapters.split(",") if a]
    shots_list = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    rows: list[dict[str, Any]] = []
    for pair in args.pairs.split(","):
        source, target = pair.split(":")
        for shots in shots_list:
            for seed in seeds:
                metrics = run_one(args, source, target, shots, seed, adapters)
                gen = metrics.generator
                for adapter, d in (metrics.synthetic_delta or {}).items():
                    rows.append({"pair": pair, "shots": shots, "seed": seed, "adapter": adapter,
                                 "with": d.with_, "without": d.without, "delta": d.delta,
                                 "synthetic_images": d.synthetic_images,
                                 **{k: getattr(gen, k, None)
                                    for k in ("cas", "cas_real", "fid", "kid_mean")}})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    for name, text in (("results.json", json.dumps(rows, indent=1)), ("results.md", table + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print()
    print(table)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (pair, shots, adapter): accuracy without and with the synthetic
    images, the paired delta (mean ± std over seeds) and whether |mean| exceeds the std;
    then the generator quality per (pair, shots)."""
    lines = ["| pair | shots | adapter | seeds | without synthetic | with synthetic | delta "
             "| \\|delta\\| > 1 std |", "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["pair"], r["shots"], r["adapter"]) for r in rows))
    for pair, shots, adapter in keys:
        rs = [r for r in rows if (r["pair"], r["shots"], r["adapter"]) == (pair, shots, adapter)]
        (wo, wo_s), (wi, wi_s), (d, d_s) = (mean_std([r[k] for r in rs]) for k in ("without", "with", "delta"))
        beyond = ("no" if len(rs) < 2 or abs(d) <= d_s else "yes, helps" if d > 0
                  else "yes, hurts")
        lines.append(f"| {pair} | {shots} | {adapter} | {len(rs)} | {wo:.3f} ± {wo_s:.3f} | "
                     f"{wi:.3f} ± {wi_s:.3f} | {d:+.3f} ± {d_s:.3f} | {beyond} |")
    quality = [r for r in rows if r.get("cas") is not None]
    if quality:
        lines += ["", "| pair | shots | CAS | CAS real | FID (encoder features) | KID |",
                  "|---|---|---|---|---|---|"]
        for pair, shots in dict.fromkeys((r["pair"], r["shots"]) for r in quality):
            # One value per seed (the rows repeat it per adapter).
            rs = list({r["seed"]: r for r in quality if (r["pair"], r["shots"]) == (pair, shots)}.values())
            cells = [("{:.3f} ± {:.3f}" if k != "kid_mean" else "{:.4f} ± {:.4f}").format(
                *mean_std([r[k] for r in rs])) for k in ("cas", "cas_real", "fid", "kid_mean")]
            lines.append(f"| {pair} | {shots} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
