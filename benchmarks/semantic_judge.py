"""How good a judge is the semantic-consistency classifier (issue 26, part 1)? The gan's
``semantic_weight`` trains a small classifier on style-randomised source images
(imgxfer.components.generators.translation) and then asks every translation to satisfy
it. This script trains that classifier alone, for several step counts, with and without
the style randomisation, and reports its accuracy on the source images and on every
target image (target labels are used for this report only; nothing is chosen on them).

    OMP_NUM_THREADS=1 python benchmarks/semantic_judge.py --pairs mnist:mnist-m,syndigits:mnist \\
        --steps 500,2000 --plain --threads 1

(``--plain`` adds the classifier without style randomisation at the last step count.)

One JSON line per (pair, steps, randomised) goes to results/semantic_judge/results.jsonl;
the table is printed from that file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from imgxfer.components.generators import translation
from imgxfer.core.progress import NullProgress
from imgxfer.nn.generator_training import to_model_range
from imgxfer.nn.preprocess import match_channels
from imgxfer.plugin.host import get_registry

OUT = Path(__file__).parent / "results" / "semantic_judge" / "results.jsonl"


def images(name: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = get_registry().build("datasets", name, {}, seed=0)
    pixels = data.images.load(list(range(len(data.images)))).float()
    return (to_model_range(match_channels(pixels, channels), 32),
            torch.as_tensor(data.labels).long())


@torch.inference_mode()
def accuracy(judge: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    right = sum(int((judge(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum())
                for i in range(0, len(x), 500))
    return right / len(x)


def measure(source: str, target: str, steps: int, randomised: bool, seed: int) -> dict[str, object]:
    xt, yt = images(target, 3 if target == "mnist-m" else 1)
    xs, ys = images(source, int(xt.shape[1]))
    data = translation.TranslationData(xs, ys, xs[:0], ys[:0], xt, 10)
    translation.SEMANTIC_STEPS = steps
    plain = translation._randomise_style
    if not randomised:
        translation._randomise_style = lambda x, target, draw: x
    start = time.perf_counter()
    try:
        cpu = torch.device("cpu")
        judge = translation._semantic_network(data, 16, seed, cpu)
        translation._train_semantic(judge, data, batch_size=128, seed=seed,
                                    progress=NullProgress(), device=cpu)
        judge.eval()
    finally:
        translation._randomise_style = plain
    seconds = time.perf_counter() - start
    on_source, on_target = accuracy(judge, xs, ys), accuracy(judge, xt, yt)
    return {"pair": f"{source}:{target}", "steps": steps, "randomised": randomised,
            "seed": seed, "source_accuracy": round(on_source, 4),
            "target_accuracy": round(on_target, 4), "seconds": round(seconds, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="mnist:mnist-m,syndigits:mnist")
    ap.add_argument("--steps", default="500,2000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", action="store_true",
                    help="also the classifier without style randomisation, at the last steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        steps = [int(s) for s in args.steps.split(",")]
        for pair in args.pairs.split(","):
            source, target = pair.split(":")
            cells = [(n, True) for n in steps] + ([(steps[-1], False)] if args.plain else [])
            for n, randomised in cells:
                row = measure(source, target, n, randomised, args.seed)
                with OUT.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(row, flush=True)
    print("| pair | steps | style randomised | seed | on source | on target | s (threads) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for line in OUT.read_text().splitlines():
        r = json.loads(line)
        print(f"| {r['pair']} | {r['steps']} | {'yes' if r['randomised'] else 'no'} | "
              f"{r['seed']} | {r['source_accuracy']:.3f} | {r['target_accuracy']:.3f} | "
              f"{r['seconds']} ({r['threads']}) |")


if __name__ == "__main__":
    main()
