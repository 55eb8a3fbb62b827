"""The whole chain of DESIGN.md as one library call: data -> encoder -> captions ->
generator -> adapter -> evaluation -> run folder. The CLI's `imgxfer run` is a thin
wrapper around :func:`run`."""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from imgxfer import __version__
from imgxfer.budget import Budget, parse_duration
from imgxfer.config import NONE, RunConfig
from imgxfer.data import GeneratorData, ImageDataset, Split, TransferData, align_classes, few_shot_split
from imgxfer.errors import UserError
from imgxfer.evaluation import classification_metrics
from imgxfer.plugins import get_registry
from imgxfer.progress import NullProgress, Progress
from imgxfer.registry import Registry
from imgxfer.runfolder import (atomic_save_tensors, atomic_write_json, atomic_write_text,
                               check_out_dir, create_run_dir)
from imgxfer.training import predict_logits

log = logging.getLogger("imgxfer")


@dataclass
class RunResult:
    folder: Path
    metrics: dict[str, Any]
    config: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but CUDA is not available here.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' was asked for but MPS is not available here.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(registry: Registry, kind: str, name: str, options: dict[str, Any], seed: int) -> Any:
    """Build a component; a factory that takes ``seed`` gets the run's seed unless the
    user set one."""
    component = registry.get(kind, name)
    if "seed" in component.options() and "seed" not in options:
        options = {**options, "seed": seed}
    return component.build(name, options)


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def load_data(config: RunConfig, registry: Registry) -> tuple[ImageDataset, Split]:
    source = build(registry, "datasets", config.source, config.options["source"], config.seed)
    target = build(registry, "datasets", config.target, config.options["target"], config.seed + 1)
    source = align_classes(source, target)
    split = few_shot_split(target, config.shots, test_fraction=config.test_fraction,
                           seed=config.seed)
    return source, split


@dataclass
class Plan:
    """Everything a run needs, built and checked before anything is written."""

    config: RunConfig
    device: torch.device
    source: ImageDataset
    split: Split
    encoder: Any
    captioner: Any
    generator: Any
    adapters: dict[str, Any]
    generator_time: float | None


def prepare(config: RunConfig, registry: Registry | None = None) -> Plan:
    """Validate the config, look up and build every component and load the data. Every
    user mistake that can be found before training (names, options, data, split, output
    folder) is raised here as a :class:`UserError`, before any folder is created."""
    registry = registry or get_registry()
    config.validate()
    device = resolve_device(config.device)
    check_out_dir(config.out)
    # Look every component up first, so a typo fails in a second, not after data loading.
    lookups = [("datasets", config.source), ("datasets", config.target),
               ("encoders", config.encoder), ("captioners", config.captioner)]
    lookups += [("adapters", name) for name in config.adapter_names()]
    if config.generator != NONE:
        lookups.append(("generators", config.generator))
    for kind, name in lookups:
        registry.get(kind, name)
    gen_time = parse_duration(config.generator_time) if config.generator_time else None

    seed_everything(config.seed)
    source, split = load_data(config, registry)
    encoder = build(registry, "encoders", config.encoder, config.options["encoder"], config.seed)
    captioner = build(registry, "captioners", config.captioner, config.options["captioner"], config.seed)
    # The [adapter] options belong to the adapter named there; compared ones use defaults.
    adapters = {name: build(registry, "adapters", name,
                            config.options["adapter"] if name == config.adapter else {},
                            config.seed)
                for name in config.adapter_names()}
    generator = (build(registry, "generators", config.generator, config.options["generator"],
                       config.seed) if config.generator != NONE else None)
    return Plan(config, device, source, split, encoder, captioner, generator, adapters, gen_time)


def run(config: RunConfig, *, progress: Progress = NullProgress(),
        registry: Registry | None = None, folder: Path | None = None) -> RunResult:
    """Run the chain and write the run folder (``folder``, or a new one under
    ``config.out``)."""
    plan = prepare(config, registry)
    return execute(plan, progress=progress, folder=folder)


def execute(plan: Plan, *, progress: Progress = NullProgress(),
            folder: Path | None = None) -> RunResult:
    config = plan.config
    if folder is None:
        folder = create_run_dir(config.out, config.name)
    else:
        folder.mkdir(parents=True)
    atomic_write_text(folder / "config.toml", config.to_toml())
    with _log_to(folder / "run.log"):
        log.info("imgxfer %s, run folder %s, device %s", __version__, folder, plan.device)
        return _run_stages(plan, folder, progress)


def _run_stages(plan: Plan, folder: Path, progress: Progress) -> RunResult:
    config, device, source, split = plan.config, plan.device, plan.source, plan.split
    encoder, captioner, generator = plan.encoder, plan.captioner, plan.generator
    gen_time = plan.generator_time
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {"imgxfer_version": __version__, "seed": config.seed,
                               "device": str(device)}
    target = split.test
    metrics["data"] = {
        "source": {"name": config.source, "domain": source.domain, "images": len(source)},
        "target": {"name": config.target, "domain": target.domain,
                   "labelled": len(split.labelled), "unlabelled": len(split.unlabelled),
                   "test": len(split.test)},
        "classes": list(target.class_names),
        "notes": source.notes + split.test.notes,
    }
    log.info("source %s: %d images; target %s: %d labelled, %d unlabelled, %d test",
             source.domain, len(source), target.domain, len(split.labelled),
             len(split.unlabelled), len(split.test))

    # 1. encoder: trained on the source if it knows how (pretrained backbones skip this).
    t0 = time.perf_counter()
    encoder = encoder.to(device)
    if hasattr(encoder, "pretrain") and config.encoder_steps > 0:
        metrics["encoder"] = encoder.pretrain(source, budget=Budget(config.encoder_steps),
                                              progress=progress, device=device)
    else:
        metrics["encoder"] = {}
    metrics["encoder"].update(name=config.encoder, feature_dim=int(encoder.feature_dim),
                              weights=str(encoder.weights_source))
    timings["encoder"] = time.perf_counter() - t0
    log.info("encoder %s: %s", config.encoder, metrics["encoder"])

    # 2. captions for every labelled image (they condition the generator).
    t0 = time.perf_counter()
    captions = {
        "source": captioner.caption(source.images, source.labels, class_names=source.class_names,
                                    domain=source.domain, description=source.description),
        "target": captioner.caption(split.labelled.images, split.labelled.labels,
                                    class_names=target.class_names, domain=target.domain,
                                    description=target.description),
    }
    timings["captioner"] = time.perf_counter() - t0

    # 3. generator: learn source + target shots, then synthesise labelled target images.
    synthetic = None
    extras: dict[str, Any] = {}
    if generator is not None:
        t0 = time.perf_counter()
        gdata = GeneratorData(
            images=torch.cat([source.images, split.labelled.images]),
            labels=torch.cat([source.labels, split.labelled.labels]),
            captions=captions["source"] + captions["target"],
            domains=[source.domain] * len(source) + [target.domain] * len(split.labelled),
            class_names=list(target.class_names), target_domain=target.domain,
        )
        history = generator.fit(gdata, budget=Budget(config.generator_steps, gen_time),
                                progress=progress, device=device) or {}
        timings["generator_fit"] = time.perf_counter() - t0
        labels = torch.arange(target.num_classes).repeat_interleave(config.synthetic_per_class)
        prompts = captioner.caption(None, labels, class_names=target.class_names,
                                    domain=target.domain, description=target.description)
        t0 = time.perf_counter()
        images = generator.sample(prompts, labels, seed=config.seed) if len(labels) else None
        timings["generator_sample"] = time.perf_counter() - t0
        if images is not None:
            synthetic = ImageDataset(images, labels, list(target.class_names),
                                     f"synthetic-{target.domain}", target.description)
            captions["synthetic"] = prompts
        atomic_save_tensors(folder / "generator.safetensors", generator.state_dict(),
                            {"component": config.generator,
                             "options": json.dumps(config.options["generator"])})
        metrics["generator"] = {"name": config.generator,
                                "steps": len(history.get("g_loss", [])),
                                "synthetic_images": 0 if synthetic is None else len(synthetic)}
        extras["generator_history"] = history
        log.info("generator %s: %s", config.generator, metrics["generator"])

    # 4. adapters: each starts from the same source-trained encoder and the same data.
    data = TransferData(source, split.labelled, split.unlabelled, synthetic)
    x_test = encoder.preprocess(split.test.images)
    metrics["adapters"] = {}
    classifier = None
    for i, (name, adapter) in enumerate(plan.adapters.items()):
        # Adapters train the encoder in place; each gets its own copy.
        model_encoder = copy.deepcopy(encoder)
        t0 = time.perf_counter()
        model = adapter.fit(model_encoder, data, budget=Budget(config.adapter_steps),
                            progress=progress, device=device)
        seconds = time.perf_counter() - t0
        suffix = "" if len(plan.adapters) == 1 else f"-{name.replace('/', '_')}"
        atomic_save_tensors(folder / f"classifier{suffix}.safetensors", model.state_dict(),
                            {"encoder": config.encoder, "adapter": name,
                             "classes": json.dumps(list(target.class_names))})
        # 5. evaluation on the held-out target test split (never used above).
        logits = predict_logits(model, x_test, device)
        result = classification_metrics(split.test.labels.tolist(), logits.argmax(1).tolist(),
                                        target.class_names)
        metrics["adapters"][name] = {"accuracy": result["accuracy"],
                                     "macro_f1": result["macro_f1"],
                                     "train_seconds": round(seconds, 2)}
        log.info("adapter %s: target accuracy %.4f, macro F1 %.4f (%.1f s)", name,
                 result["accuracy"], result["macro_f1"], seconds)
        if i == 0:  # the first adapter is the run's classifier and headline numbers
            metrics["target"], classifier = result, model
        timings[f"adapter:{name}"] = seconds
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}

    # Unlabelled target images are documented with the adapted classifier's guesses.
    captions["unlabelled"] = captioner.caption(
        split.unlabelled.images, None, class_names=target.class_names, domain=target.domain,
        description=target.description,
        classifier=lambda images: predict_logits(classifier, encoder.preprocess(images),
                                                 device).softmax(1))

    from imgxfer import report

    report.write_captions(folder / "captions.jsonl", captions, source, split)
    extras.update(source=source, split=split, synthetic=synthetic, captions=captions)
    atomic_write_json(folder / "metrics.json", metrics)
    report.write_report(folder, config, metrics, extras)
    log.info("report written to %s", folder / "report.html")
    return RunResult(folder, metrics, config, extras)


@dataclass
class SeedsResult:
    folder: Path
    runs: list[RunResult]
    summary: dict[str, dict[str, float]]  # adapter -> accuracy/macro_f1 mean and std


def summarise(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds, per adapter."""
    summary: dict[str, dict[str, float]] = {}
    for name in runs[0].metrics["adapters"]:
        row: dict[str, float] = {"seeds": len(runs)}
        for key in ("accuracy", "macro_f1", "train_seconds"):
            values = np.array([r.metrics["adapters"][name][key] for r in runs], dtype=float)
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[name] = row
    return summary


def run_seeds(config: RunConfig, seeds: list[int], *, progress: Progress = NullProgress(),
              registry: Registry | None = None) -> SeedsResult:
    """The same config under several seeds: ``<out>/<stamp>-<name>/seed-<k>/`` run
    folders plus ``summary.json`` with mean ± std per adapter."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct seeds, got {seeds!r}.")
    plans = [prepare(replace(config, seed=seeds[0]), registry)]  # checks input first
    parent = create_run_dir(config.out, config.name)
    runs = []
    for i, seed in enumerate(seeds):
        plan = plans[0] if i == 0 else prepare(replace(config, seed=seed), registry)
        progress.log(f"seed {seed} ({i + 1}/{len(seeds)})")
        runs.append(execute(plan, progress=progress, folder=parent / f"seed-{seed}"))
    summary = summarise(runs)
    atomic_write_json(parent / "summary.json", {"seeds": seeds, "adapters": summary})
    return SeedsResult(parent, runs, summary)
