"""Does any weight of the synthetic images help? For finished run folders of
``benchmarks/augmentation.py``, fine-tune again with the run's own synthetic images at
several ``synthetic_weight`` values (0 = without them) and report target test accuracy,
mean ± std over the seeds, and the paired delta against weight 0.

    python benchmarks/synthetic_weight.py --runs benchmarks/results/augmentation \\
        --cells syndigits-digits-1shot --weights 0,0.1,0.5,1 \\
        --out benchmarks/results/synthetic_weight.json

Per run folder: the run's config rebuilds its data split and encoder (pretrained again on
the source with the run's seed and steps), its ``generator.safetensors`` and the prompts
in its ``captions.jsonl`` redraw its synthetic images, and the adapter (``--adapter``,
default `finetune`, default options except ``synthetic_weight``) is trained once per
weight from the same encoder. Results of finished (cell, seed, adapter, weight) in
``--out`` are kept and not run again.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from common import cell

from imgxfer.cli.generate import load_generator
from imgxfer.core.budget import Budget
from imgxfer.core.config import load
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import ImageDataset, TransferData
from imgxfer.plugin.host import get_registry
from imgxfer.tasks.classify.plan import prepare
from imgxfer.tasks.classify.stages.adapt import fit_and_evaluate


def synthetic_of(folder: Path, class_names: list[str], seed: int) -> ImageDataset:
    rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["set"] == "synthetic"]
    labels = torch.tensor([class_names.index(r["label"]) for r in rows])
    generator = load_generator(folder, get_registry()).generator
    images = generator.sample([r["caption"] for r in rows], labels, seed=seed)
    return ImageDataset(images, labels, list(class_names), "synthetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="benchmarks/results/augmentation")
    ap.add_argument("--cells", default="syndigits-digits-1shot",
                    help="comma list of run-folder groups under --runs")
    ap.add_argument("--weights", default="0,0.1,0.5,1")
    ap.add_argument("--adapter", default="finetune",
                    help="adapter trained at each weight (one with a synthetic_weight option)")
    ap.add_argument("--out", default="benchmarks/results/synthetic_weight.json")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else []
    for r in results:  # rows written before --adapter existed are finetune's
        r.setdefault("adapter", "finetune")
    have = {(r["cell"], r["seed"], r["adapter"], r["weight"]) for r in results}
    registry = get_registry()
    for name in args.cells.split(","):
        for folder in sorted((Path(args.runs) / name).glob("seed-*")):
            config = load(folder / "config.toml")
            todo = [w for w in weights if (name, config.seed, args.adapter, w) not in have]
            if not todo or not (folder / "metrics.json").is_file():
                continue
            plan = prepare(config, registry)
            plan.encoder = plan.encoder.to(plan.device)
            plan.encoder.pretrain(plan.source, budget=Budget(config.encoder_steps),
                                  device=plan.device)
            synthetic = synthetic_of(folder, plan.split.test.class_names, config.seed)
            for w in todo:
                adapter = registry.build("adapters", args.adapter, {"synthetic_weight": w},
                                         seed=config.seed)
                data = TransferData(plan.source, plan.split.labelled, plan.split.unlabelled,
                                    synthetic if w > 0 else None)
                _, metrics, seconds = fit_and_evaluate(plan, adapter, data,
                                                       NullProgress())
                row = {"cell": name, "seed": config.seed, "adapter": args.adapter, "weight": w,
                       "accuracy": metrics.accuracy, "train_s": round(seconds, 1)}
                print(json.dumps(row), flush=True)
                results.append(row)
                out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    by_seed = defaultdict(dict)
    for r in results:
        by_seed[(r["cell"], r["adapter"], r["seed"])][r["weight"]] = r["accuracy"]
    lines = ["| run cell | adapter | synthetic_weight | seeds | accuracy | delta vs weight 0 |",
             "|---|---|---|---|---|---|"]
    for name, adapter in dict.fromkeys((r["cell"], r["adapter"]) for r in results):
        runs = [v for (c, a, _), v in by_seed.items() if (c, a) == (name, adapter)]
        for w in sorted({w for v in runs for w in v}):
            acc = [v[w] for v in runs if w in v]
            delta = [v[w] - v[0.0] for v in runs if w in v and 0.0 in v]
            lines.append(f"| {name} | {adapter} | {w:g} | {len(acc)} | {cell(acc)} | "
                         f"{cell(delta, signed=True)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
