"""Generators at an equal wall-clock budget: the built-in `gan` against the `diffusion`
generator of imgxfer-diffusers, trained on real MNIST digits for the same time on the
same threads, measured as in ``gan_quality.py`` (whose data split, smallcnn feature
encoder and real reference this script imports): CAS (train on synthetic only, test on
real), CAS real, FID / KID in smallcnn features, plus training steps done and the time
to draw 1,000 images; mean ± std over seeds and each generator's ratio to the first
(``gan``).

    python benchmarks/generator_budget.py --generators gan,diffusion --budgets 5m \\
        --seeds 0,1,2 --threads 2 --out benchmarks/results/generator_budget.jsonl

One JSON line per (generator, budget, seed) is appended to ``--out`` as soon as it is
measured; a rerun skips the lines already there (with the same settings), so an
interrupted sweep continues. ``--table-only`` prints the table from the file.

Data: per seed, 4,000 training digits (400 per class) and 1,000 held-out test digits
(``gan_quality.SeedSetup``). Each generator draws ``--per-class`` images per class from
the captioner's prompts; sampling is timed over all of them and reported per 1,000.
Generator options are the defaults of each (``--diffusion-opt key=value`` and
``--gan-opt key=value`` change them); each line records all of them, defaults included,
and only lines with the current ones are reused and tabled.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import cell, read_rows
from gan_quality import PrintProgress, SeedSetup

from imgxfer.components.datasets.mnist import mnist
from imgxfer.core.budget import Budget, parse_duration
from imgxfer.core.config import parse_option
from imgxfer.data.dataset import GeneratorData, ImageDataset
from imgxfer.tasks.classify.plan import resolve_device, seed_everything
from imgxfer.tasks.classify.synthesis import synthesis_prompts

METRICS = ("steps", "cas", "cas_real", "fid", "fid_real", "kid_mean", "kid_real_mean",
           "sample_s_per_1000")


def make_generator(name: str, seed: int, options: dict[str, Any]) -> Any:
    if name == "gan":
        from imgxfer.components.generators.gan import ConditionalGAN

        return ConditionalGAN(seed=seed, **options)
    if name == "diffusion":
        from imgxfer_diffusers import DiffusionGenerator  # pip install ./plugins/imgxfer-diffusers

        return DiffusionGenerator(seed=seed, **options)
    raise SystemExit(f"unknown generator {name!r}; choose gan or diffusion")


def resolved_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The generator's options with its defaults filled in (seed left out), so lines made
    with other defaults are not taken for these."""
    options = make_generator(name, 0, args.options[name]).resolved_options()
    return {k: v for k, v in options.items() if k != "seed"}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a line depends on besides generator, budget and seed (reused only when equal)."""
    return {"threads": args.threads, "per_class": args.per_class,
            "encoder_steps": args.encoder_steps, "cas_steps": args.cas_steps,
            "device": str(args.device)}


def measure(setup: SeedSetup, name: str, budget: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    from imgxfer.tasks.classify.quality import classification_accuracy_score, feature_distances

    seed, device, train = setup.seed, setup.device, setup.train
    seed_everything(seed)
    generator = make_generator(name, seed, args.options[name])
    data = GeneratorData(images=train.images, labels=train.labels, captions=setup.captions,
                         domains=[train.domain] * len(train), class_names=train.class_names,
                         target_domain=train.domain)
    t0 = time.perf_counter()
    result = generator.fit(data, budget=Budget(None, parse_duration(budget)).start(),
                           progress=PrintProgress(f"[seed {seed}, {name}, {budget}]"),
                           device=device)
    fit_s = time.perf_counter() - t0
    labels = torch.arange(train.num_classes).repeat_interleave(args.per_class)
    prompts = synthesis_prompts(setup.captioner, labels, train, setup.captions, seed=seed)
    t0 = time.perf_counter()
    images = generator.sample(prompts, labels, seed=seed, device=device)
    sample_s = time.perf_counter() - t0
    synthetic = ImageDataset(images, labels, list(train.class_names), "synthetic-mnist")
    with torch.random.fork_rng(devices=[]):
        cas = classification_accuracy_score(synthetic, setup.test, steps=args.cas_steps,
                                            seed=seed, device=device)
        dist = feature_distances(setup.encoder, setup.test, synthetic, device, seed=seed)
    return {"generator": name, "budget": budget, "seed": seed, **settings(args),
            "options": resolved_options(name, args), "steps": result.steps, "fit_s": round(fit_s, 1),
            "sample_s": round(sample_s, 1), "sampled": len(labels),
            "sample_s_per_1000": round(sample_s * 1000 / len(labels), 1),
            "cas": cas, **setup.reference, "fid": dist["fid"],
            "kid_mean": dist["kid_mean"], "kid_std": dist["kid_std"]}


def measure_floor(setup: SeedSetup, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """The real training images (as many per class as a generator draws) taken down to
    ``size`` px and back, as the diffusion generator's samples are: the best CAS and FID a
    generator working at that size could reach here. Needs no training budget."""
    import torch.nn.functional as F

    from imgxfer.tasks.classify.quality import (
        classification_accuracy_score,
        feature_distances,
        matched_real_subset,
    )

    seed, device, train = setup.seed, setup.device, setup.train
    real = matched_real_subset(train, [args.per_class] * train.num_classes, seed=seed)
    small = F.interpolate(real.images, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    images = F.interpolate(small, size=real.images.shape[-2:], mode="bilinear",
                           align_corners=False).clamp(0, 1)
    floor = ImageDataset(images, real.labels, list(real.class_names), f"real@{size}px")
    with torch.random.fork_rng(devices=[]):
        cas = classification_accuracy_score(floor, setup.test, steps=args.cas_steps, seed=seed,
                                            device=device)
        dist = feature_distances(setup.encoder, setup.test, floor, device, seed=seed)
    return {"generator": f"real@{size}px", "budget": "-", "seed": seed, **settings(args),
            "options": {}, "steps": 0, "fit_s": 0, "sample_s": 0, "sampled": len(floor),
            "sample_s_per_1000": 0, "cas": cas, **setup.reference, "fid": dist["fid"],
            "kid_mean": dist["kid_mean"], "kid_std": dist["kid_std"]}


def table(rows: list[dict[str, Any]], generators: list[str], budgets: list[str]) -> str:
    """One row per (budget, generator), mean ± std over seeds; ratios to the first
    generator of the same budget (CAS, FID, steps and sampling time)."""
    lines = ["| budget | generator | seeds | steps | CAS | CAS real | FID | FID real | KID | "
             "KID real | s / 1,000 samples | CAS ratio | FID ratio | steps ratio | "
             "sampling ratio |", "|" + "---|" * 15]
    for budget in budgets:
        ref = [r for r in rows if r["budget"] == budget and r["generator"] == generators[0]]
        for name in generators:
            rs = [r for r in rows if r["budget"] == budget and r["generator"] == name]
            if not rs:
                continue
            col = {k: [float(r[k]) for r in rs] for k in METRICS}

            def ratio(key: str, ref: list = ref, col: dict = col) -> str:
                base = np.mean([r[key] for r in ref]) if ref else 0
                return f"{np.mean(col[key]) / base:.2f}x" if base else "–"

            lines.append(
                f"| {budget} | {name} | {len(rs)} | {cell(col['steps'], 0)} | "
                f"{cell(col['cas'])} | {cell(col['cas_real'])} | {cell(col['fid'])} | "
                f"{cell(col['fid_real'])} | {cell(col['kid_mean'], 4)} | "
                f"{cell(col['kid_real_mean'], 4)} | {cell(col['sample_s_per_1000'], 1)} | "
                f"{ratio('cas')} | {ratio('fid')} | {ratio('steps')} | "
                f"{ratio('sample_s_per_1000')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generators", default="gan,diffusion")
    ap.add_argument("--budgets", default="5m", help="comma list of training times: 90s,5m")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly)")
    ap.add_argument("--per-class", type=int, default=400, help="synthetic images per class")
    ap.add_argument("--encoder-steps", type=int, default=1000,
                    help="smallcnn training steps (the FID/KID feature space)")
    ap.add_argument("--cas-steps", type=int, default=1000, help="steps of each CAS classifier")
    ap.add_argument("--gan-opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--diffusion-opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/generator_budget.jsonl")
    ap.add_argument("--real-floor", type=int, metavar="PX",
                    help="instead of training: real images round-tripped through PX pixels "
                         "(the ceiling of a generator working at PX), one row per seed")
    ap.add_argument("--table-only", action="store_true",
                    help="print the table of the lines in --out and stop")
    args = ap.parse_args()
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.device = resolve_device(args.device)
    args.options = {"gan": dict(parse_option(o, "--gan-opt") for o in args.gan_opt),
                    "diffusion": dict(parse_option(o, "--diffusion-opt")
                                      for o in args.diffusion_opt)}

    same = settings(args)
    resolved = {name: resolved_options(name, args) for name in generators}

    def wanted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["seed"] in seeds and r["budget"] in budgets
                and r["generator"] in generators
                and all(r.get(k) == v for k, v in same.items())
                and r.get("options") == resolved[r["generator"]]]

    if args.real_floor:
        rows = [measure_floor(SeedSetup(seed, args, args.device, mnist()), args.real_floor, args)
                for seed in seeds]
        with Path(args.out).open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(table(rows, [f"real@{args.real_floor}px"], ["-"]))
        return
    if not args.table_only:
        data = None
        for seed in seeds:
            setup = None
            for budget in budgets:
                for name in generators:
                    if any(r["generator"] == name and r["budget"] == budget and r["seed"] == seed
                           for r in wanted(read_rows(out))):
                        print(f"seed {seed} {name} {budget}: already in {out}, skipped",
                              flush=True)
                        continue
                    data = data if data is not None else mnist()
                    setup = setup or SeedSetup(seed, args, args.device, data)
                    row = measure(setup, name, budget, args)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"seed {seed} {name} {budget}: {row['steps']} steps, CAS "
                          f"{row['cas']:.3f} (real {row['cas_real']:.3f}), FID {row['fid']:.3f}, "
                          f"KID {row['kid_mean']:.4f}, {row['sample_s_per_1000']} s per 1,000 "
                          "samples", flush=True)
        print()
    print(table(wanted(read_rows(out)), generators, budgets))


if __name__ == "__main__":
    main()
