"""Transfer accuracy benchmark: every adapter (plus the target-only baseline) on source
-> target pairs at several shot counts, mean ± std over seeds, with training time.

    python benchmarks/transfer.py --pairs syndigits:mnist,syndigits:digits --shots 0,10 \
        --seeds 0,1,2 --out docs/benchmarks-transfer.json

The encoder is trained on the source once per (source, seed) and each adapter starts
from a copy of it, exactly as `imgxfer run --compare` does. Target test labels are used
for the reported numbers only.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from imgxfer.budget import Budget
from imgxfer.config import RunConfig
from imgxfer.data import TransferData, align_classes, few_shot_split
from imgxfer.evaluation import classification_metrics
from imgxfer.pipeline import build, resolve_device, seed_everything
from imgxfer.plugins import get_registry
from imgxfer.training import predict_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="syndigits:mnist,syndigits:digits,mnist:digits,digits:mnist")
    ap.add_argument("--shots", default="0,1,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--adapters", default="", help="comma list; default: every registered adapter")
    ap.add_argument("--encoder", default="smallcnn")
    ap.add_argument("--encoder-steps", type=int, default=RunConfig.encoder_steps)
    ap.add_argument("--adapter-steps", type=int, default=RunConfig.adapter_steps)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="write the raw results as JSON here")
    args = ap.parse_args()

    registry = get_registry()
    device = resolve_device(args.device)
    adapters = [a for a in args.adapters.split(",") if a] or registry.names("adapters")
    shots_list = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    for pair in args.pairs.split(","):
        source_name, target_name = pair.split(":")
        for seed in seeds:
            seed_everything(seed)
            target = build(registry, "datasets", target_name, {}, seed + 1)
            source = align_classes(build(registry, "datasets", source_name, {}, seed), target)
            encoder = build(registry, "encoders", args.encoder, {}, seed).to(device)
            t0 = time.perf_counter()
            if hasattr(encoder, "pretrain"):
                encoder.pretrain(source, budget=Budget(args.encoder_steps), device=device)
            pretrain_s = time.perf_counter() - t0
            for shots in shots_list:
                split = few_shot_split(target, shots, seed=seed)
                data = TransferData(source, split.labelled, split.unlabelled, None)
                x_test = encoder.preprocess(split.test.images)
                for name in adapters:
                    if name == "target-only" and shots == 0:
                        continue  # nothing to train on
                    adapter = build(registry, "adapters", name, {}, seed)
                    t0 = time.perf_counter()
                    model = adapter.fit(copy.deepcopy(encoder), data,
                                        budget=Budget(args.adapter_steps), device=device)
                    seconds = time.perf_counter() - t0
                    pred = predict_logits(model, x_test, device).argmax(1)
                    m = classification_metrics(split.test.labels.tolist(), pred.tolist(),
                                               target.class_names)
                    rows.append({"pair": pair, "shots": shots, "seed": seed, "adapter": name,
                                 "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                                 "train_s": seconds, "pretrain_s": pretrain_s})
                    print(f"{pair:18s} shots={shots:2d} seed={seed} {name:14s} "
                          f"acc={m['accuracy']:.3f} ({seconds:.0f}s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print()
    print(markdown_table(rows, shots_list))


def markdown_table(rows: list[dict], shots_list: list[int]) -> str:
    """One row per (pair, adapter), one column per shot count: mean ± std accuracy."""
    lines = ["| pair | adapter | " + " | ".join(f"{s} shots" for s in shots_list) + " | train s |",
             "|---|---|" + "---|" * (len(shots_list) + 1)]
    keys = list(dict.fromkeys((r["pair"], r["adapter"]) for r in rows))
    for pair, adapter in keys:
        cells, times = [], []
        for s in shots_list:
            acc = [r["accuracy"] for r in rows if (r["pair"], r["adapter"], r["shots"]) == (pair, adapter, s)]
            times += [r["train_s"] for r in rows if (r["pair"], r["adapter"], r["shots"]) == (pair, adapter, s)]
            cells.append(f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f}" if acc else "–")
        lines.append(f"| {pair} | {adapter} | " + " | ".join(cells) + f" | {np.mean(times):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
