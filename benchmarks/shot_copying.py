"""Does the GAN draw new target images, or variations of its few labelled shots?

For each finished run folder of ``benchmarks/augmentation.py`` (``--runs``), rebuilds the
run's data split (its ``config.toml``) and generator (``generator.safetensors``), draws
the run's synthetic images again from the prompts recorded in ``captions.jsonl`` (same
prompts, labels and seed as the run), and measures :func:`imgxfer.tasks.classify.quality.shot_copying`:
the fraction of synthetic images whose nearest real target image of the same class (pixel
L2, among the shots and the test split) is a shot, against the same fraction for real
held-out images. Prints a markdown table, mean ± std over the seeds of each
(pair, shots).

    python benchmarks/shot_copying.py --runs benchmarks/results/augmentation \
        --out benchmarks/results/shot_copying.md
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from common import cell
from synthetic_weight import synthetic_of  # the run's synthetic images, redrawn

from imgxfer.core.config import load
from imgxfer.plugin.host import get_registry
from imgxfer.tasks.classify.quality import shot_copying
from imgxfer.tasks.classify.stages.data import load_data


def measure(folder: Path) -> dict[str, float]:
    config = load(folder / "config.toml")
    _, split = load_data(config, get_registry())
    synthetic = synthetic_of(folder, split.test.class_names, config.seed)
    return {"shots": config.shots, "pair": f"{config.source}:{config.target}",
            **shot_copying(synthetic, split.labelled, split.test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="benchmarks/results/augmentation",
                    help="a folder of augmentation.py's run folders")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args()
    cells: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for folder in sorted(Path(args.runs).glob("*/seed-*")):
        if (folder / "metrics.json").is_file() and (folder / "generator.safetensors").is_file():
            m = measure(folder)
            print(f"{folder}: nearest is a shot {m['nearest_shot']:.3f} "
                  f"(real {m['nearest_shot_real']:.3f})", flush=True)
            cells[(m["pair"], m["shots"])].append(m)
    lines = ["| pair | shots | seeds | synthetic: nearest real is a shot | real held-out: "
             "nearest real is a shot |", "|---|---|---|---|---|"]
    for (pair, shots), ms in cells.items():
        cols = [cell([m[key] for m in ms]) for key in ("nearest_shot", "nearest_shot_real")]
        lines.append(f"| {pair} | {shots} | {len(ms)} | {cols[0]} | {cols[1]} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table, end="")
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
