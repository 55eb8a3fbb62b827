"""The whole chain of DESIGN.md as one library call: data -> encoder -> captions ->
generator -> adapter -> evaluation -> run folder. The CLI's `imgxfer run` is a thin
wrapper around :func:`run`."""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
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


def run(config: RunConfig, *, progress: Progress = NullProgress(),
        registry: Registry | None = None) -> RunResult:
    """Run the chain and write the run folder. Every user mistake that can be found
    before training (names, options, data, split, output folder) is raised as a
    :class:`UserError` before the run folder is created."""
    registry = registry or get_registry()
    config.validate()
    device = resolve_device(config.device)
    check_out_dir(config.out)
    # Look every component up first, so a typo fails in a second, not after training.
    for kind, name in [("datasets", config.source), ("datasets", config.target),
                       ("encoders", config.encoder), ("captioners", config.captioner),
                       ("adapters", config.adapter)] + (
            [("generators", config.generator)] if config.generator != NONE else []):
        registry.get(kind, name)
    gen_time = parse_duration(config.generator_time) if config.generator_time else None

    seed_everything(config.seed)
    source, split = load_data(config, registry)
    encoder = build(registry, "encoders", config.encoder, config.options["encoder"], config.seed)
    captioner = build(registry, "captioners", config.captioner, config.options["captioner"], config.seed)
    adapter = build(registry, "adapters", config.adapter, config.options["adapter"], config.seed)
    generator = (build(registry, "generators", config.generator, config.options["generator"],
                       config.seed) if config.generator != NONE else None)

    folder = create_run_dir(config.out, config.name)
    atomic_write_text(folder / "config.toml", config.to_toml())
    with _log_to(folder / "run.log"):
        log.info("imgxfer %s, run folder %s, device %s", __version__, folder, device)
        return _run_stages(config, folder, device, progress, source, split, encoder,
                           captioner, generator, adapter, gen_time)


def _run_stages(config: RunConfig, folder: Path, device: torch.device, progress: Progress,
                source: ImageDataset, split: Split, encoder: Any, captioner: Any,
                generator: Any, adapter: Any, gen_time: float | None) -> RunResult:
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

    # 4. adapter: transfer to the target with everything available.
    t0 = time.perf_counter()
    data = TransferData(source, split.labelled, split.unlabelled, synthetic)
    classifier = adapter.fit(encoder, data, budget=Budget(config.adapter_steps),
                             progress=progress, device=device)
    timings["adapter"] = time.perf_counter() - t0
    atomic_save_tensors(folder / "classifier.safetensors", classifier.state_dict(),
                        {"encoder": config.encoder, "adapter": config.adapter,
                         "classes": json.dumps(list(target.class_names))})

    # 5. evaluation on the held-out target test split (never used above).
    t0 = time.perf_counter()
    logits = predict_logits(classifier, encoder.preprocess(split.test.images), device)
    metrics["target"] = classification_metrics(split.test.labels.tolist(),
                                               logits.argmax(1).tolist(), target.class_names)
    timings["evaluation"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    log.info("target accuracy %.4f, macro F1 %.4f", metrics["target"]["accuracy"],
             metrics["target"]["macro_f1"])

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
