"""Does the default run's generator pay (issue 26, part 2)? The default run (smallcnn,
template captions, GAN, ``finetune``, 10 shots, the default budgets) with
``--compare-synthetic``: every cell is one run that fits the adapter with and without the
synthetic images on the same split, seed and source-trained encoder, so the paired delta
is the generator's effect alone.

    # choose the mode and the generator's steps on syndigits -> mnist (its labels may guide)
    python benchmarks/default_synthesis.py --pair syndigits:mnist --seeds 0,1,2 \
        --settings text-1500,translate-250,translate-500,translate-1000 --threads 1
    # then report the chosen one unchanged on the default pair, 5 seeds
    python benchmarks/default_synthesis.py --pair syndigits:digits --seeds 0,1,2,3,4 \
        --settings default --threads 1

A setting is MODE-STEPS (``text-1500``: prompts, 1,500 GAN steps; ``translate-500``:
translation, 500 translator steps), with optional suffixes ``-nCOUNT``
(``translate-300-n400``: 400 synthetic images per class instead of the default 100) and
``-sWEIGHT`` (``translate-300-s1``: the gan's ``semantic_weight`` 1, semantic consistency
with a frozen source classifier), ``-eSTEPS`` and ``-aSTEPS`` (the encoder's and the
adapter's step budgets instead of the run's defaults) and ``-uPOLICY`` (``--augment``;
without it each component's own policy, as before ``--augment auto``), or ``default``
(whatever ``imgxfer run`` does now).
``--against SETTING`` adds a second table: each setting's accuracies with and without the
synthetic images minus SETTING's on the same seeds (both adapters on the same split), so
a change of settings (``-ustyle`` against plain) is paired too.
Run folders (config.toml, metrics.json) are kept under
``benchmarks/results/default_synthesis/``; a rerun reads finished cells back.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from common import PLAIN, cell, mean_std, run_once

from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UserError
from imgxfer.run.metrics import RunMetrics, SyntheticDelta

ROOT = Path(__file__).parent / "results" / "default_synthesis"


def config_for(setting: str, source: str, target: str, seed: int, shots: int,
               adapter: str = RunConfig.adapter) -> RunConfig:
    tag = "" if shots == 10 else f"-{shots}shot"  # 10: the folders of the first cells
    if adapter != RunConfig.adapter:
        tag += f"-{adapter}"
    base = RunConfig(name=f"{source}-{target}-{setting}{tag}", source=source, target=target,
                     seed=seed, shots=shots, adapter=adapter, compare_synthetic=True,
                     out=str(ROOT))
    if setting == "default":
        return base
    mode, steps, *extras = setting.split("-")
    given = {extra[0]: extra[1:] for extra in extras}
    if not set(given) <= {"n", "s", "e", "a", "u"}:
        raise SystemExit(f"unknown suffix in {setting!r}: "
                         "MODE-STEPS[-nCOUNT][-sWEIGHT][-eSTEPS][-aSTEPS][-uPOLICY]")
    per_class = int(given.get("n", base.synthetic_per_class))
    options = {**base.options, "generator": {"semantic_weight": float(given["s"])}
               if "s" in given else {}}
    return replace(base, synthesis=mode, generator_steps=int(steps),
                   synthetic_per_class=per_class, options=options,
                   encoder_steps=int(given.get("e", base.encoder_steps)),
                   adapter_steps=int(given.get("a", base.adapter_steps)),
                   augment=given.get("u", PLAIN))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="syndigits:mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default="default")
    ap.add_argument("--shots", type=int, default=RunConfig.shots)
    ap.add_argument("--adapter", default=RunConfig.adapter,
                    help="the adapter fitted with and without the synthetic images")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly)")
    ap.add_argument("--against", default="", help="a setting to pair every setting with")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source, target = args.pair.split(":")
    for setting in {*args.settings.split(","), *([args.against] if args.against else [])}:
        try:  # a mistyped setting stops the script before any cell runs
            config_for(setting, source, target, 0, args.shots, args.adapter).validate()
        except (UserError, ValueError) as error:
            raise SystemExit(f"setting {setting!r}: {error}") from None
    # No seconds here: these runs share the machine; the default run is timed alone
    # (docs/benchmarks.md).
    print("| pair | shots | setting | seeds | with synthetic | without | paired delta "
          "| delta > 0 | CAS (real) |")
    print("|---|---|---|---|---|---|---|---|---|")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[SyntheticDelta]] = {}  # each setting's cells, for --against
    for setting in args.settings.split(","):
        with_, without, deltas, cas, cas_real = [], [], [], [], []
        for seed in seeds:
            delta, metrics = _run_cell(setting, source, target, seed, args)
            results.setdefault(setting, []).append(delta)
            with_.append(delta.with_)
            without.append(delta.without)
            deltas.append(delta.delta)
            cas.append(metrics.generator.cas)
            cas_real.append(metrics.generator.cas_real)
        beyond = len(deltas) > 1 and mean_std(deltas)[0] > mean_std(deltas)[1]
        print(f"| {args.pair} | {args.shots} | {setting} | {len(deltas)} | {cell(with_, 4)} | "
              f"{cell(without, 4)} | {cell(deltas, 4, signed=True)}{' (> 1 std)' * beyond} | "
              f"{sum(d > 0 for d in deltas)}/{len(deltas)} | {cell(cas, 3)} "
              f"({cell(cas_real, 3)}) |", flush=True)
    if args.against:
        base = results.get(args.against) or [
            _run_cell(args.against, source, target, seed, args)[0] for seed in seeds]
        _paired_table(args, results, base)


def _run_cell(setting: str, source: str, target: str, seed: int,
              args: argparse.Namespace) -> tuple[SyntheticDelta, RunMetrics]:
    """One seed's cell (run now, or read back): the adapter's paired result and metrics."""
    config = config_for(setting, source, target, seed, args.shots, args.adapter)
    metrics, _ = run_once(config, ROOT / config.name / f"seed-{seed}")
    return metrics.synthetic_delta[config.adapter], metrics


def _paired_table(args: argparse.Namespace, results: dict[str, list[SyntheticDelta]],
                  base: list[SyntheticDelta]) -> None:
    """Each setting's cells minus ``base`` (``--against``'s), seed by seed, with and
    without synthetic images."""
    print("\n| pair | setting | against | seeds | with synthetic: paired | better "
          "| without: paired | better |\n|---|---|---|---|---|---|---|---|")
    n = len(base)
    for setting, rows in results.items():
        d_with = [r.with_ - b.with_ for r, b in zip(rows, base, strict=True)]
        d_without = [r.without - b.without for r, b in zip(rows, base, strict=True)]
        print(f"| {args.pair} | {setting} | {args.against} | {n} | "
              f"{cell(d_with, 4, signed=True)} | {sum(d > 0 for d in d_with)}/{n} | "
              f"{cell(d_without, 4, signed=True)} | {sum(d > 0 for d in d_without)}/{n} |")


if __name__ == "__main__":
    main()
