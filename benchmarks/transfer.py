"""Transfer accuracy benchmark: every adapter (plus the target-only baseline) on source
-> target pairs at several shot counts, mean ± std over seeds, with training time.

    python benchmarks/transfer.py --pairs syndigits:mnist,syndigits:digits --shots 0,10 \
        --seeds 0,1,2 --out benchmarks/results/transfer.jsonl

The encoder is trained on the source once per (source, seed) and each adapter starts
from a copy of it, exactly as `imgxfer run --compare` does; the target-only baseline
starts from a new, untrained encoder (k labelled target shots, no source at all). Target test labels are used
for the reported numbers only.

With --out, every finished cell is appended to a JSON-lines file at once, and a rerun
skips the cells already there: the full grid (hours on a 2-core CPU) can be filled in
over several sessions, and the table is printed from everything in the file.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import TABLE_ADAPTER_STEPS, TABLE_ENCODER_STEPS, cell
from safetensors.torch import load_file, save_file

from imgxfer.core.budget import Budget
from imgxfer.data.dataset import TransferData, align_classes, few_shot_split
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.host import get_registry
from imgxfer.tasks.classify.evaluation import classification_metrics, information_maximization
from imgxfer.tasks.classify.plan import resolve_device, seed_everything


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="syndigits:mnist,syndigits:digits,mnist:digits,digits:mnist")
    ap.add_argument("--shots", default="0,1,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--adapters", default="", help="comma list; default: every registered adapter")
    ap.add_argument("--encoder", default="smallcnn")
    ap.add_argument("--encoder-steps", type=int, default=TABLE_ENCODER_STEPS)
    ap.add_argument("--adapter-steps", type=int, default=TABLE_ADAPTER_STEPS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="append results to this JSON-lines file; "
                    "cells already in it are skipped")
    ap.add_argument("--table-only", action="store_true", help="print the table from --out")
    args = ap.parse_args()

    registry = get_registry()
    device = resolve_device(args.device)
    adapters = [a for a in args.adapters.split(",") if a] or registry.names("adapters")
    shots_list = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out) if args.out else None
    rows: list[dict] = []
    if out and out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    settings = {"encoder": args.encoder, "encoder_steps": args.encoder_steps,
                "adapter_steps": args.adapter_steps}

    def done(pair: str, shots: int, seed: int, name: str) -> bool:
        return any((r["pair"], r["shots"], r["seed"], r["adapter"]) == (pair, shots, seed, name)
                   and all(r.get(k) == v for k, v in settings.items()) for r in rows)

    pairs = args.pairs.split(",")
    for pair in [] if args.table_only else pairs:
        source_name, target_name = pair.split(":")
        for seed in seeds:
            todo = [(s, a) for s in shots_list for a in adapters
                    if not (a == "target-only" and s == 0) and not done(pair, s, seed, a)]
            if not todo:
                continue
            seed_everything(seed)
            target = registry.build("datasets", target_name, seed=seed + 1)
            source = align_classes(registry.build("datasets", source_name, seed=seed), target)
            encoder = registry.build("encoders", args.encoder, seed=seed).to(device)
            pretrain_s = 0.0
            if any(a != "target-only" for _, a in todo):  # target-only never uses it
                pretrain_s = pretrain(encoder, source, args, seed, device,
                                      out.parent / "encoders" if out else None)
            for shots in shots_list:
                split = few_shot_split(target, shots, seed=seed)
                data = TransferData(source, split.labelled, split.unlabelled, None)
                x_test = encoder.preprocess(split.test.images)
                x_pool = encoder.preprocess(split.unlabelled.images)
                for name in adapters:
                    if (shots, name) not in todo:
                        continue  # target-only has nothing to train on at 0 shots
                    same = reusable(rows, pair, shots, seed, name, settings)
                    if same is not None:  # the same model was trained in another cell
                        row = {**same, "pair": pair, "shots": shots,
                               "same_model_as": f"{same['pair']}, {same['shots']} shots"}
                        rows.append(row)
                        if out:
                            with out.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                        print(f"{pair:18s} shots={shots:2d} seed={seed} {name:14s} "
                              f"acc={row['accuracy']:.3f} (the model of {row['same_model_as']})",
                              flush=True)
                        continue
                    # Each cell seeds itself, so a resumed grid gives the same numbers.
                    seed_everything(seed)
                    adapter = registry.build("adapters", name, seed=seed)
                    # target-only is "k shots from scratch": a new, untrained encoder.
                    start = (registry.build("encoders", args.encoder, seed=seed).to(device)
                             if name == "target-only" else copy.deepcopy(encoder))
                    t0 = time.perf_counter()
                    model = adapter.fit(start, data,
                                        budget=Budget(args.adapter_steps), device=device)
                    seconds = time.perf_counter() - t0
                    pred = predict_logits(model, x_test, device).argmax(1)
                    m = classification_metrics(split.test.labels.tolist(), pred.tolist(),
                                               target.class_names)
                    # The score without labels, on the unlabelled target images.
                    im = information_maximization(predict_logits(model, x_pool, device))["im"]
                    row = {"pair": pair, "shots": shots, "seed": seed, "adapter": name,
                           "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                           "unlabelled_im": im, "train_s": seconds, "pretrain_s": pretrain_s,
                           **settings}
                    rows.append(row)
                    if out:
                        with out.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                    print(f"{pair:18s} shots={shots:2d} seed={seed} {name:14s} "
                          f"acc={m['accuracy']:.3f} ({seconds:.0f}s)", flush=True)
    chosen = [r for r in rows if r["pair"] in pairs and r["seed"] in seeds
              and r["adapter"] in adapters and all(r.get(k) == v for k, v in settings.items())]
    print()
    print(markdown_table(chosen, shots_list, len(seeds), pairs, adapters))
    print()
    print(validator_table(chosen, pairs, shots_list))


def reusable(rows: list[dict], pair: str, shots: int, seed: int, name: str,
             settings: dict) -> dict | None:
    """A finished cell that trained the very model this one would, with the same seed:
    source-only never sees target images, and the test split does not depend on the shot
    count (it is drawn first), so any shot count of the same pair will do; target-only
    never sees the source, so the same target and shot count of another pair will do."""
    source, target = pair.split(":")

    def same(r: dict) -> bool:
        if name == "source-only":
            return r["pair"] == pair
        if name == "target-only":
            return r["pair"].split(":")[1] == target and r["shots"] == shots
        return False

    return next((r for r in rows if (r["seed"], r["adapter"]) == (seed, name) and same(r)
                 and not r.get("same_model_as")
                 and all(r.get(k) == v for k, v in settings.items())), None)


def pretrain(encoder, source, args, seed: int, device, cache: Path | None) -> float:
    """Train the encoder on the source (or load the copy an earlier invocation saved);
    returns the training seconds, as measured when it was trained."""
    if not hasattr(encoder, "pretrain"):
        return 0.0
    path = cache / f"{args.encoder}-{source.domain}-seed{seed}-{args.encoder_steps}.safetensors" if cache else None
    if path and path.exists():
        state = load_file(path)
        seconds = float(state.pop("pretrain_seconds"))
        encoder.load_state_dict(state)
        return seconds
    t0 = time.perf_counter()
    encoder.pretrain(source, budget=Budget(args.encoder_steps), device=device)
    seconds = time.perf_counter() - t0
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({**{k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
                   "pretrain_seconds": torch.tensor(seconds)}, path)
    return seconds


def validator_table(rows: list[dict], pairs: list[str], shots_list: list[int]) -> str:
    """How well the IM score (no labels) chooses among the adapters of one split: for each
    (pair, shots, seed) with IM for at least three adapters, whether its choice is the
    most accurate one, the accuracy lost against the best, and its advantage over the
    mean of those adapters, plus the Spearman rank correlation of IM with accuracy. The
    last column repeats the choice without self-training, whose sharp pseudo-label
    probabilities give it the top IM almost always (see docs/benchmarks.md)."""
    from scipy.stats import spearmanr

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("unlabelled_im") is not None:
            groups.setdefault((r["pair"], r["shots"], r["seed"]), []).append(r)
    lines = ["| pair | shots | splits | adapters | IM picks the best | accuracy lost vs best "
             "| gain vs adapters' mean | Spearman ρ | without self-training: picks, lost |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pair in pairs:
        for shots in shots_list:
            found = [g for (p, s, _), g in sorted(groups.items()) if (p, s) == (pair, shots)
                     and len(g) >= 3]
            if not found:
                continue
            hits, lost, gain = im_choice_stats(found)
            others = [[r for r in g if r["adapter"] != "self-training"] for g in found]
            others = [g for g in others if len(g) >= 3]
            without = "–"
            if others:
                o_hits, o_lost, _ = im_choice_stats(others)
                without = f"{o_hits}/{len(others)}, {cell(o_lost)}"
            rho = [spearmanr([r["unlabelled_im"] for r in g],
                             [r["accuracy"] for r in g]).statistic for g in found]
            names = sorted({r["adapter"] for g in found for r in g})
            lines.append(f"| {pair} | {shots} | {len(found)} | {', '.join(names)} | "
                         f"{hits}/{len(found)} | {cell(lost)} | {cell(gain, signed=True)} | "
                         f"{cell(rho, 2)} | {without} |")
    return "\n".join(lines)


def im_choice_stats(splits: list[list[dict]]) -> tuple[int, list[float], list[float]]:
    """For splits of candidate rows: how often the highest IM is the most accurate, the
    accuracy lost against the best, and the gain over the candidates' mean."""
    hits, lost, gain = 0, [], []
    for g in splits:
        acc = np.array([r["accuracy"] for r in g])
        pick = acc[int(np.argmax([r["unlabelled_im"] for r in g]))]
        hits += int(pick == acc.max())
        lost.append(float(acc.max() - pick))
        gain.append(float(pick - acc.mean()))
    return hits, lost, gain


def markdown_table(rows: list[dict], shots_list: list[int], n_seeds: int, pairs: list[str],
                   adapters: list[str]) -> str:
    """One row per (pair, adapter), in the order of ``pairs`` and ``adapters``, one column
    per shot count: mean ± std accuracy over the seeds (a cell with fewer than
    ``n_seeds`` results says how many it has)."""
    lines = ["| pair | adapter | " + " | ".join(f"{s} shot{'' if s == 1 else 's'}" for s in shots_list) + " | train s |",
             "|---|---|" + "---|" * (len(shots_list) + 1)]
    keys = sorted(dict.fromkeys((r["pair"], r["adapter"]) for r in rows),
                  key=lambda k: (pairs.index(k[0]), adapters.index(k[1])))
    for pair, adapter in keys:
        cells, times = [], []
        for s in shots_list:
            acc = [r["accuracy"] for r in rows if (r["pair"], r["adapter"], r["shots"]) == (pair, adapter, s)]
            times += [r["train_s"] for r in rows if (r["pair"], r["adapter"], r["shots"]) == (pair, adapter, s)
                      and not r.get("same_model_as")]  # a reused model trained once
            partial = (f" ({len(acc)} seed{'s' if len(acc) > 1 else ''})"
                       if 0 < len(acc) < n_seeds else "")
            cells.append(cell(acc) + partial)
        seconds = f"{np.mean(times):.0f}" if times else "–"  # all reused: see their cells
        lines.append(f"| {pair} | {adapter} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
