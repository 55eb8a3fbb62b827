"""Milliseconds per training step (issue 26, part 4): the GAN drawing from text, the
translator (``--synthesis translate``) and a fine-tuning adapter, at 32 px, batch 64, on
the default pair's data (syndigits -> digits), through the public library calls only, so
the same script times any checkout of the code.

    python benchmarks/step_time.py --threads 2

Each figure is (time of ``3 * steps`` steps - time of ``steps`` steps) / ``2 * steps``,
after a warm-up: the set-up (network construction, standing statistics, data
preparation) cancels out. To
compare two versions of the code, run this script under each checkout (``PYTHONPATH=
CHECKOUT/src``) alternately, several times, and compare medians (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace

import torch

from imgxfer.core.budget import Budget
from imgxfer.core.config import RunConfig
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import TransferData
from imgxfer.plugin.host import get_registry
from imgxfer.tasks.classify.plan import prepare
from imgxfer.tasks.classify.stages.generate import generator_data


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_step(make, steps: int) -> float:
    """ms per step of ``make(n)`` (which trains ``n`` steps from a fresh start), after a
    warm-up call (oneDNN builds its kernels on first use, which would count against the
    shorter run)."""
    make(2)
    short, long = timed(lambda: make(steps)), timed(lambda: make(3 * steps))
    return 1000 * (long - short) / (2 * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--only", default="gan,translate,finetune",
                    help="comma list of gan, translate, translate-semantic (the gan's "
                    "semantic_weight 1.0; its judge's fixed training cancels out), finetune")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry = get_registry()
    cpu = torch.device("cpu")
    base = RunConfig(device="cpu", quality=False, shots=10)  # text needs target shots
    plans = {mode: prepare(replace(base, synthesis=mode), registry)
             for mode in ("text", "translate")}
    if "translate-semantic" in args.only:
        from imgxfer.components.generators import translation

        translation.SEMANTIC_STEPS = 5  # a fixed cost that the difference cancels anyway
        plans["translate-semantic"] = prepare(replace(
            base, synthesis="translate",
            options={**base.options, "generator": {"semantic_weight": 1.0}}), registry)
    captions = {"source": ["a digit"] * len(plans["text"].source),
                "target": ["a digit"] * len(plans["text"].split.labelled)}

    def generator(mode: str):
        plan = plans[mode]
        data = generator_data(plan.config, plan.source, plan.split, captions)
        return lambda n: copy.deepcopy(plan.generator).fit(
            data, budget=Budget(n).start(), progress=NullProgress(), device=cpu)

    def finetune(n: int) -> None:
        plan = plans["text"]
        data = TransferData(plan.source, plan.split.labelled, plan.split.unlabelled, None)
        adapter = copy.deepcopy(plan.adapters["finetune"])
        adapter.fit(copy.deepcopy(plan.encoder), data, budget=Budget(n).start(),
                    progress=NullProgress(), device=cpu)

    makers = {"gan": lambda: generator("text"), "translate": lambda: generator("translate"),
              "translate-semantic": lambda: generator("translate-semantic"),
              "finetune": lambda: finetune}
    result = {name: round(per_step(makers[name](), args.steps), 1)
              for name in args.only.split(",")}
    print(json.dumps({"threads": args.threads, "ms_per_step": result}))


if __name__ == "__main__":
    main()
