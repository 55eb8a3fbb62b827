"""Augmentation policies and fine-tuning regularisers: target test accuracy of each
variant against today's default, paired over seeds, per (pair, shots).

    python benchmarks/policies.py --pairs syndigits:digits,digits:mnist --shots 1,5,10 \
        --seeds 0,1,2 --out benchmarks/results/policies.jsonl

A variant is an adapter with options (``finetune``, ``finetune augment=strong``,
``finetune l2sp=0.01``...). Per (pair, seed) the encoder is pre-trained on the source once,
with the default policy, and every variant starts from a copy of it on the same split,
so the paired difference to the default isolates the variant. Target test labels are
used for the reported numbers only; nothing is chosen on them here.

``--label`` names the code that ran (rows are kept apart by it): running this script with
``PYTHONPATH`` pointing at an older checkout and ``--label before --variants finetune,
self-training`` measures the code before a change on the same cells (options an older
adapter lacks cannot be measured that way).

With --out, every finished cell is appended at once and a rerun skips the cells there.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import cell, mean_std, read_rows
from safetensors.torch import load_file, save_file

from imgxfer.core.budget import Budget
from imgxfer.data.dataset import TransferData, align_classes, few_shot_split
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.host import get_registry
from imgxfer.tasks.classify.evaluation import classification_metrics
from imgxfer.tasks.classify.plan import seed_everything

POLICY_VARIANTS = [f"finetune augment={p}" for p in ("none", "strong", "randaugment",
                                                      "trivialaugment")]
REGULARISER_VARIANTS = ["finetune l2sp=0.01", "finetune bss=0.001", "finetune mix=mixup",
                        "finetune mix=cutmix"]
DEFAULT_VARIANTS = ["finetune", *POLICY_VARIANTS, *REGULARISER_VARIANTS, "self-training",
                    "self-training strong_augment=randaugment"]


def parse_variant(text: str) -> tuple[str, dict]:
    """``"finetune l2sp=0.01 mix=cutmix"`` -> ``("finetune", {"l2sp": 0.01, "mix": "cutmix"})``."""
    name, *pairs = text.split()
    options = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def run_cell(registry, variant: str, encoder, data: TransferData, split, steps: int,
             seed: int, device) -> dict:
    name, options = parse_variant(variant)
    seed_everything(seed)  # each cell seeds itself, so a resumed grid gives the same numbers
    adapter = registry.build("adapters", name, options, seed=seed)
    t0 = time.perf_counter()
    model = adapter.fit(copy.deepcopy(encoder), data, budget=Budget(steps), device=device)
    seconds = time.perf_counter() - t0
    pred = predict_logits(model, split.test.images, device,
                          preprocess=model.encoder.preprocess).argmax(1)
    m = classification_metrics(split.test.labels.tolist(), pred.tolist(),
                               split.test.class_names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "train_s": seconds}


def pretrained(registry, source, pair: str, seed: int, args, device):
    """smallcnn trained on the source (the default policy), or the copy an earlier
    invocation with the same pair, seed, steps and label saved in ``--cache``."""
    encoder = registry.build("encoders", "smallcnn", seed=seed).to(device)
    path = Path(args.cache) / (f"{pair.replace(':', '-')}-seed{seed}-{args.encoder_steps}"
                               f"-{args.label}.safetensors")
    if path.is_file():
        encoder.load_state_dict(load_file(path))
        return encoder
    encoder.pretrain(source, budget=Budget(args.encoder_steps), device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, path)
    return encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="syndigits:digits,digits:mnist")
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--encoder-steps", type=int, default=200)
    ap.add_argument("--adapter-steps", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="now", help="the code that runs (see above)")
    ap.add_argument("--out", default="benchmarks/results/policies.jsonl")
    ap.add_argument("--cache", default="benchmarks/results/policies-encoders",
                    help="pre-trained encoders kept between invocations")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs, variants = args.pairs.split(","), args.variants.split(",")
    shots_list = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    rows = read_rows(out)
    settings = {"encoder_steps": args.encoder_steps, "adapter_steps": args.adapter_steps,
                "label": args.label}

    def done(pair: str, shots: int, seed: int, variant: str) -> bool:
        return any((r["pair"], r["shots"], r["seed"], r["variant"]) == (pair, shots, seed, variant)
                   and all(r.get(k) == v for k, v in settings.items()) for r in rows)

    registry, device = get_registry(), torch.device("cpu")
    for pair in [] if args.table_only else pairs:
        source_name, target_name = pair.split(":")
        for seed in seeds:
            todo = [(s, v) for s in shots_list for v in variants if not done(pair, s, seed, v)]
            if not todo:
                continue
            seed_everything(seed)
            target = registry.build("datasets", target_name, seed=seed + 1)
            source = align_classes(registry.build("datasets", source_name, seed=seed), target)
            encoder = pretrained(registry, source, pair, seed, args, device)
            for shots, variant in todo:
                split = few_shot_split(target, shots, seed=seed)
                data = TransferData(source, split.labelled, split.unlabelled, None)
                result = run_cell(registry, variant, encoder, data, split, args.adapter_steps,
                                  seed, device)
                row = {"pair": pair, "shots": shots, "seed": seed, "variant": variant,
                       **result, **settings}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{pair} shots={shots} seed={seed} {variant:42s} "
                      f"acc={result['accuracy']:.3f} ({result['train_s']:.0f}s)", flush=True)
    print(table([r for r in rows if r["pair"] in pairs and r["seed"] in seeds
                 and r["encoder_steps"] == args.encoder_steps
                 and r["adapter_steps"] == args.adapter_steps], pairs, shots_list))


def table(rows: list[dict], pairs: list[str], shots_list: list[int]) -> str:
    """Per (pair, variant) and shot count: accuracy mean ± std over seeds, and the paired
    difference to the same adapter's default (``finetune`` or ``self-training`` with no
    options, label ``now``) with ``*`` where it exceeds one standard deviation."""
    lines = ["| pair | variant | " + " | ".join(f"{s} shot{'s' * (s != 1)}: acc (Δ)"
                                               for s in shots_list) + " |",
             "|---|---|" + "---|" * len(shots_list)]
    keys = list(dict.fromkeys((r["pair"], r["variant"], r["label"]) for r in rows))
    for pair in pairs:
        for _, variant, label in [k for k in keys if k[0] == pair]:
            base_name = variant.split()[0]
            cells = []
            for s in shots_list:
                mine = {r["seed"]: r["accuracy"] for r in rows if
                        (r["pair"], r["variant"], r["label"], r["shots"]) == (pair, variant, label, s)}
                base = {r["seed"]: r["accuracy"] for r in rows if
                        (r["pair"], r["variant"], r["label"], r["shots"]) == (pair, base_name, "now", s)}
                diffs = [mine[k] - base[k] for k in sorted(mine.keys() & base.keys())]
                text = cell(list(mine.values()))
                if diffs and (variant != base_name or label != "now"):
                    m, sd = mean_std(diffs)
                    text += f" ({m:+.3f} ± {sd:.3f}{'*' if len(diffs) > 1 and abs(m) > sd else ''})"
                cells.append(text)
            shown = variant if label == "now" else f"{variant} [{label}]"
            lines.append(f"| {pair} | {shown} | " + " | ".join(cells) + " |")
    times = [r["train_s"] for r in rows]
    lines.append(f"\nMean adapter time per cell: {np.mean(times):.0f} s." if times else "")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
