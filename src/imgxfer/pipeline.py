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
from imgxfer.classifier import Classifier
from imgxfer.config import NONE, RunConfig, check_device, same_run
from imgxfer.data import (GeneratorData, ImageDataset, Split, TransferData, align_classes,
                          few_shot_split, separate_origins)
from imgxfer.encoders.preprocess import match_channels
from imgxfer.errors import UserError
from imgxfer.evaluation import classification_metrics, information_maximization
from imgxfer.plugins import get_registry
from imgxfer.progress import NullProgress, Progress
from imgxfer.protocols import FitResult, checkpoint_args, declared
from imgxfer.registry import Registry
from imgxfer.runfolder import (atomic_save_tensors, atomic_write_json, atomic_write_text,
                               check_out_dir, create_run_dir)
from imgxfer.synthesis import check_mode, synthesise, synthesis_prompts  # noqa: F401
from imgxfer.training import predict_logits

log = logging.getLogger("imgxfer")


@dataclass
class RunResult:
    folder: Path
    metrics: dict[str, Any]
    config: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    check_device(name)
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


FINGERPRINT_IMAGES = (2, 3, 32, 32)


@torch.inference_mode()
def fingerprint(model: Classifier, device: torch.device) -> list[list[float]]:
    """The logits of an eval-mode classifier for two fixed noise images: saved with it,
    so a rebuilt copy (``imgxfer predict``) can prove it computes the same function
    (weights that load into another architecture variant would not)."""
    x = torch.rand(FINGERPRINT_IMAGES, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    logits = model(model.encoder.preprocess(x.to(device))).float().cpu()
    model.train(was_training)
    return [[round(v, 5) for v in row] for row in logits.tolist()]


def image_brightness(images: torch.Tensor) -> list[float]:
    """Mean and std over images of each image's mean pixel value: saved with a
    classifier, so `imgxfer predict` can tell images far darker or brighter than the
    run's target images (e.g. dark ink on light paper for a light-on-dark target)."""
    per_image = images.float().flatten(1).mean(1) if len(images) else torch.zeros(1)
    return [round(float(per_image.mean()), 4), round(float(per_image.std(correction=0)), 4)]


def build(registry: Registry, kind: str, name: str, options: dict[str, Any], seed: int) -> Any:
    """Build a component (checked against its protocol); a factory that takes ``seed``
    gets the run's seed unless the user set one."""
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


def resolve_auto_options(config: RunConfig, registry: Registry, source: ImageDataset,
                         target: ImageDataset) -> RunConfig:
    """The config with the encoder's ``in_channels`` set to the run's image channels (the
    most of source and target) when its factory defaults it to 0 (auto) and the user did
    not set it, so colour targets (mnist-m) get a colour encoder while greyscale runs
    stay greyscale; config.toml then records it, so ``imgxfer predict`` rebuilds it."""
    options = config.options["encoder"]
    defaults = registry.get("encoders", config.encoder).defaults()
    if defaults.get("in_channels") != 0 or options.get("in_channels", 0) != 0:
        return config
    channels = max(int(source.images.shape[1]), int(target.images.shape[1]))
    channels = 3 if channels >= 3 else 1
    return replace(config, options={**config.options,
                                    "encoder": {**options, "in_channels": channels}})


def load_data(config: RunConfig, registry: Registry) -> tuple[ImageDataset, Split]:
    source = build(registry, "datasets", config.source, config.options["source"], config.seed)
    target = build(registry, "datasets", config.target, config.options["target"], config.seed + 1)
    source, target = separate_origins(align_classes(source, target), target)
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
    generator_budget: Budget | None


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
    # generator_steps = 0 with a time is a time-only budget (imgxfer run --generator-budget).
    gen_budget = Budget(config.generator_steps or None, gen_time) if (
        config.generator_steps or gen_time) else None

    seed_everything(config.seed)
    source, split = load_data(config, registry)
    config = resolve_auto_options(config, registry, source, split.test)
    encoder = build(registry, "encoders", config.encoder, config.options["encoder"], config.seed)
    captioner = build(registry, "captioners", config.captioner, config.options["captioner"], config.seed)
    # The [adapter] options belong to the adapter named there; compared ones use defaults.
    adapters = {name: build(registry, "adapters", name,
                            config.options["adapter"] if name == config.adapter else {},
                            config.seed)
                for name in config.adapter_names()}
    generator = (build(registry, "generators", config.generator, config.options["generator"],
                       config.seed) if config.generator != NONE else None)
    check_zero_steps(config, adapters, generator)
    if generator is not None:
        check_mode(config.synthesis, generator, config.generator, registry)
    if generator is not None and config.synthesis == "translate" and not len(split.unlabelled):
        raise UserError("--synthesis translate learns the target's style from its unlabelled "
                        f"images, and {config.shots} shots per class leave none besides the "
                        "test split; lower --shots.")
    return Plan(config, device, source, split, encoder, captioner, generator, adapters, gen_budget)


def check_zero_steps(config: RunConfig, adapters: dict[str, Any], generator: Any) -> None:
    """0 adapter or generator steps would leave a component that trains by steps
    untrained (a classifier head that never saw a label, a generator that draws noise),
    so it is refused; components marked ``trains_by_steps = False`` (the linear probe,
    solved to convergence) ignore the count. 0 encoder steps is a real choice: a
    pretrained backbone as it is, or a random-features baseline."""
    if config.adapter_steps == 0:
        stepped = [n for n, a in adapters.items() if declared(a, "trains_by_steps", "adapters")]
        if stepped:
            raise UserError(f"--adapter-steps 0 would leave {', '.join(stepped)} untrained "
                            "(a classifier head that never saw a label); give 1 or more.")
    if (config.generator_steps == 0 and not config.generator_time and generator is not None
            and declared(generator, "trains_by_steps", "generators")):
        raise UserError(f"--generator-steps 0 would leave the generator {config.generator!r} "
                        "untrained (it would draw noise); give 1 or more, a time with "
                        "--generator-budget, or --generator none.")


def filter_synthetic(synthetic: ImageDataset, encoder: Any, source: ImageDataset, split: Split,
                     threshold: float, device: torch.device
                     ) -> tuple[ImageDataset | None, torch.Tensor, dict[str, Any]]:
    """Keep the synthetic images that a linear probe on the frozen encoder, fitted to the
    labelled source and target shots (AdaBN on the target), gives at least ``threshold``
    probability for the class they were generated as (He et al. 2023, "Is synthetic data
    from generative models ready for image recognition?"). Returns the kept images (or
    ``None``), the boolean mask and a summary for metrics.json. The probe involves no
    randomness, and the global RNG is left as it was."""
    from imgxfer.adapters.linear import fit_probe

    with torch.random.fork_rng(devices=[]):
        probe = fit_probe(copy.deepcopy(encoder), TransferData(source, split.labelled,
                                                               split.unlabelled, None),
                          {"source": 1.0, "target": 1.0}, c=1.0, max_iter=1000, adabn=True,
                          device=device, name="synthetic_filter")
        proba = predict_logits(probe, probe.encoder.preprocess(synthetic.images),
                               device).softmax(1)
    confidence = proba.gather(1, synthetic.labels.view(-1, 1)).flatten()
    kept = confidence >= threshold
    info = {"threshold": threshold, "generated": len(synthetic), "kept": int(kept.sum()),
            "kept_per_class": torch.bincount(synthetic.labels[kept],
                                             minlength=synthetic.num_classes).tolist(),
            "mean_confidence": float(confidence.mean())}
    log.info("synthetic filter: kept %d of %d images (p >= %.2f)", info["kept"], len(synthetic),
             threshold)
    return (synthetic.subset(torch.nonzero(kept).flatten()) if kept.any() else None), kept, info


def cas_steps(max_steps: int, n_images: int) -> int:
    """Training steps of each CAS classifier: about 20 epochs of ``n_images`` at batch 64,
    at least 30 and at most ``max_steps`` (tiny runs stay cheap, real ones are capped)."""
    return min(max_steps, max(30, 20 * -(-n_images // 64)))


def generator_quality_metrics(encoder: Any, synthetic: ImageDataset, split: Split, *,
                              steps: int, seed: int, device: torch.device) -> dict[str, Any]:
    """CAS, CAS real, FID and KID of the synthetic images against the target *test* split
    (used for evaluation only, as for the classifiers), in the run encoder's feature
    space, and how often they copy the labelled shots (``nearest_shot``). The real reference for CAS real is drawn from the target training images
    (labelled shots and unlabelled, with their true labels, used for this metric only)."""
    from imgxfer.quality import generator_quality

    pool = ImageDataset(torch.cat([split.labelled.images, split.unlabelled.images]),
                        torch.cat([split.labelled.labels, split.unlabelled.labels]),
                        list(split.test.class_names), split.test.domain,
                        split.test.description)
    return generator_quality(encoder, synthetic, split.test, pool,
                             cas_steps=cas_steps(steps, len(synthetic)), seed=seed,
                             device=device, shots=split.labelled)


def fit_and_evaluate(adapter: Any, encoder: Any, data: TransferData, split: Split,
                     config: RunConfig, device: torch.device, progress: Progress,
                     name: str = "") -> tuple[Any, dict[str, Any], float]:
    """Fit ``adapter`` on a copy of ``encoder`` (adapters train it in place) and evaluate
    the classifier on the held-out target test split: (model, metrics, train seconds).
    The metrics include the IM score on the unlabelled target images (``unlabelled_im``,
    ``None`` without any), which uses no labels."""
    t0 = time.perf_counter()
    model = adapter.fit(copy.deepcopy(encoder).to(device), data,
                        budget=Budget(config.adapter_steps).start(), progress=progress,
                        device=device)
    if not isinstance(model, Classifier):
        raise UserError(f"adapter {name!r} returned a {type(model).__name__}, not an "
                        "imgxfer.classifier.Classifier (the encoder and a linear head, which "
                        "classifier.safetensors holds and imgxfer predict rebuilds); see "
                        "imgxfer.protocols.Adapter.")
    seconds = time.perf_counter() - t0
    logits = predict_logits(model, encoder.preprocess(split.test.images), device)
    result = classification_metrics(split.test.labels.tolist(), logits.argmax(1).tolist(),
                                    split.test.class_names)
    result["unlabelled_im"] = None
    if len(split.unlabelled) and len(split.test.class_names) > 1:
        pool = predict_logits(model, encoder.preprocess(split.unlabelled.images), device)
        result["unlabelled_im"] = information_maximization(pool)["im"]
    return model, result, seconds


def train_generator(plan: Plan, data: GeneratorData, folder: Path, progress: Progress,
                    resume: bool) -> FitResult:
    """Fit the plan's generator within its budget. One that declares ``resumable``
    checkpoints its training into the run folder, so an interrupted run continues there
    (``imgxfer run --resume FOLDER``)."""
    name, generator = plan.config.generator, plan.generator
    resumable = checkpoint_args(generator, folder / TRAINING_CHECKPOINT, resume)
    if resume and not resumable:
        progress.log(f"{name} cannot resume its training; it starts again.")
    budget = plan.generator_budget or Budget(0)
    fitted = generator.fit(data, budget=budget.start(), progress=progress, device=plan.device,
                           **resumable)
    if not isinstance(fitted, FitResult):
        raise UserError(f"generator {name!r} broke its protocol: fit returned "
                        f"{type(fitted).__name__}, not an imgxfer.protocols.FitResult.")
    return fitted


def check_images(images: Any, count: int, name: str, method: str = "sample") -> torch.Tensor:
    """A generator's samples as the protocol promises them (``count`` float images
    ``[N, C, H, W]`` in [0, 1] on the CPU), or one sentence naming what is wrong."""
    problem = ""
    if not isinstance(images, torch.Tensor):
        problem = f"returned a {type(images).__name__}, not a tensor"
    elif images.ndim != 4 or len(images) != count:
        problem = f"returned shape {tuple(images.shape)} for {count} prompts"
    elif not images.is_floating_point():
        problem = f"returned {images.dtype} images, not float in [0, 1]"
    elif len(images) and (images.min() < 0 or images.max() > 1 or not images.isfinite().all()):
        problem = "returned values outside [0, 1]"
    if problem:
        raise UserError(f"generator {name!r} broke its protocol: {method} {problem} "
                        "(see imgxfer.protocols.Generator).")
    return images.cpu()


def synthetic_delta(with_: dict[str, Any], without: dict[str, Any], n_synthetic: int
                    ) -> dict[str, Any]:
    """Target test accuracy (and macro F1) with and without the synthetic images."""
    return {"with": with_["accuracy"], "without": without["accuracy"],
            "delta": with_["accuracy"] - without["accuracy"],
            "macro_f1_with": with_["macro_f1"], "macro_f1_without": without["macro_f1"],
            "macro_f1_delta": with_["macro_f1"] - without["macro_f1"],
            "synthetic_images": n_synthetic}


# The generator's training checkpoint inside a run folder: written while it trains (when
# the generator supports checkpoints), read by ``imgxfer run --resume``, removed once the
# run has finished (generator.safetensors then holds the trained generator).
TRAINING_CHECKPOINT = "generator-train.safetensors"


def run(config: RunConfig, *, progress: Progress = NullProgress(),
        registry: Registry | None = None, folder: Path | None = None) -> RunResult:
    """Run the chain and write the run folder (``folder``, or a new one under
    ``config.out``)."""
    plan = prepare(config, registry)
    return execute(plan, progress=progress, folder=folder)


def resume_config(folder: Path) -> RunConfig:
    """The config of an interrupted run folder, for :func:`execute` with ``resume=True``.
    A folder that is not a run folder, or whose run has finished, is refused."""
    from imgxfer import config as cfg

    if not folder.is_dir():
        raise UserError(f"--resume: {str(folder)!r} is not a folder.")
    if not (folder / "config.toml").is_file():
        raise UserError(f"--resume: {str(folder)!r} is not a run folder (it has no config.toml).")
    if (folder / "metrics.json").is_file():
        raise UserError(f"--resume: the run in {str(folder)!r} has already finished; "
                        "start a new run instead.")
    return cfg.load(folder / "config.toml")


def execute(plan: Plan, *, progress: Progress = NullProgress(),
            folder: Path | None = None, resume: bool = False) -> RunResult:
    """Run the stages of ``plan`` into ``folder`` (a new folder under ``config.out`` when
    None). With ``resume``, ``folder`` is an interrupted run of the same config: the run
    starts again from the beginning with the same seed (so the same split and encoder),
    and the generator continues from its training checkpoint instead of step 0."""
    config = plan.config
    if folder is None:
        folder = create_run_dir(config.out, config.name)
    elif not resume:
        folder.mkdir(parents=True)
    elif not same_run(resume_config(folder), config):
        raise UserError(f"--resume: {str(folder)!r} holds a run of another config; it is "
                        "left as it is.")
    atomic_write_text(folder / "config.toml", config.to_toml())
    with _log_to(folder / "run.log"):
        log.info("imgxfer %s, run folder %s, device %s%s", __version__, folder, plan.device,
                 " (resumed)" if resume else "")
        (folder / FAILED).unlink(missing_ok=True)  # a resumed run is no longer failed
        try:
            return _run_stages(plan, folder, progress, resume)
        except BaseException as error:
            mark_failed(folder, error)
            raise


# Written into a run folder whose run stopped on an error (the error's type and message;
# run.log has the traceback). A finished run has metrics.json instead.
FAILED = "failed.json"


def mark_failed(folder: Path, error: BaseException) -> None:
    """Record in ``folder`` that its run stopped on ``error``: ``failed.json`` and, with
    the traceback, run.log. An interrupted run (Ctrl-C) is recorded as such, and either
    can be continued with ``imgxfer run --resume``."""
    interrupted = isinstance(error, KeyboardInterrupt)
    if interrupted:
        log.error("run interrupted")
    elif isinstance(error, UserError):
        log.error("run stopped: %s", error)
    else:
        log.error("run failed", exc_info=error)
    atomic_write_json(folder / FAILED, {
        "status": "interrupted" if interrupted else "failed",
        "error": type(error).__name__, "message": str(error),
        "resume": f"imgxfer run --resume {folder}"})


def generator_data(config: RunConfig, source: ImageDataset, split: Split,
                   captions: dict[str, list[str]]) -> GeneratorData:
    """What the generator learns from: source images and target shots with their captions,
    and for ``--synthesis translate`` the unlabelled target images too."""
    target = split.test
    return GeneratorData(
        # One tensor: source images take the target's channel count (grey mnist digits
        # beside colour mnist-m ones become grey RGB).
        images=torch.cat([match_channels(source.images, int(target.images.shape[1])),
                          split.labelled.images]),
        labels=torch.cat([source.labels, split.labelled.labels]),
        captions=captions["source"] + captions["target"],
        domains=[source.domain] * len(source) + [target.domain] * len(split.labelled),
        class_names=list(target.class_names), target_domain=target.domain,
        synthesis=config.synthesis,
        unlabelled=split.unlabelled.images if config.synthesis == "translate" else None)


def save_generator(folder: Path, config: RunConfig, generator: Any,
                   class_names: list[str]) -> None:
    """generator.safetensors, with the options it actually used (defaults included, when
    it can say) and the class names, so `imgxfer generate` rebuilds it even if defaults
    change later."""
    resolved = declared(generator, "resolved_options", "generators")
    used = resolved() if resolved is not None else config.options["generator"]
    atomic_save_tensors(folder / "generator.safetensors", generator.state_dict(),
                        {"component": config.generator, "options": json.dumps(used),
                         "classes": json.dumps(list(class_names))})


def _generate(plan: Plan, encoder: Any, captions: dict[str, list[str]], folder: Path,
              progress: Progress, resume: bool, timings: dict[str, float],
              extras: dict[str, Any]) -> tuple[ImageDataset | None, dict[str, Any]]:
    """Train the generator, synthesise (``--synthesis``), save it, filter and measure the
    images: the synthetic set (``None`` if nothing is left) and metrics.json's
    ``generator`` section."""
    config, generator, source, split = plan.config, plan.generator, plan.source, plan.split
    target, device = split.test, plan.device
    t0 = time.perf_counter()
    fitted = train_generator(plan, generator_data(config, source, split, captions), folder,
                             progress, resume)
    timings["generator_fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    made = synthesise(config.synthesis, generator, plan.captioner, source, split,
                      captions["target"], per_class=config.synthetic_per_class,
                      seed=config.seed, device=device)
    synthetic = None if made.images is None else ImageDataset(
        check_images(made.images, len(made.labels), config.generator,
                     "sample" if made.inputs is None else "edit"),
        made.labels, list(target.class_names), f"synthetic-{target.domain}",
        target.description)
    timings["generator_sample"] = time.perf_counter() - t0
    extras["synthesis_inputs"], extras["generator_history"] = made.inputs, fitted.losses
    if synthetic is not None:
        captions["synthetic"] = made.prompts
    save_generator(folder, config, generator, target.class_names)
    metrics = {"name": config.generator, "synthesis": config.synthesis,
               "conditioning": sorted(generator.conditioning), "steps": fitted.steps,
               "synthetic_images": 0 if synthetic is None else len(synthetic)}
    if synthetic is not None and config.synthetic_filter > 0:
        t0 = time.perf_counter()
        synthetic, kept, metrics["filter"] = filter_synthetic(
            synthetic, encoder, source, split, config.synthetic_filter, device)
        captions["synthetic"] = [p for p, k in zip(made.prompts, kept.tolist()) if k]
        if made.inputs is not None:
            extras["synthesis_inputs"] = made.inputs.subset(torch.nonzero(kept).flatten())
        metrics["synthetic_images"] = 0 if synthetic is None else len(synthetic)
        timings["synthetic_filter"] = time.perf_counter() - t0
    if synthetic is not None and config.quality and len(synthetic) < 2:
        progress.log("generator quality not measured: fewer than two synthetic images.")
    elif synthetic is not None and config.quality:
        progress.log("measuring the generator: CAS (two small classifiers) and FID/KID")
        t0 = time.perf_counter()
        metrics.update(generator_quality_metrics(encoder, synthetic, split,
                                                 steps=config.quality_steps,
                                                 seed=config.seed, device=device))
        timings["generator_quality"] = time.perf_counter() - t0
    log.info("generator %s: %s", config.generator,
             {k: v for k, v in metrics.items() if k != "per_class"})
    return synthetic, metrics


def _run_stages(plan: Plan, folder: Path, progress: Progress, resume: bool = False) -> RunResult:
    config, device, source, split = plan.config, plan.device, plan.source, plan.split
    encoder, captioner, generator = plan.encoder, plan.captioner, plan.generator
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
    metrics["encoder"] = {}
    if declared(encoder, "pretrains", "encoders") and config.encoder_steps > 0:
        metrics["encoder"] = dict(encoder.pretrain(source, budget=Budget(config.encoder_steps),
                                                   progress=progress, device=device) or {})
    elif config.encoder_steps != RunConfig.encoder_steps and config.encoder_steps > 0:
        log.warning("encoder %s does not train on the source (it has no pretrain), so "
                    "encoder_steps = %d is not used.", config.encoder, config.encoder_steps)
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
        synthetic, metrics["generator"] = _generate(plan, encoder, captions, folder, progress,
                                                    resume, timings, extras)

    # 4. adapters: each starts from the same source-trained encoder and the same data.
    data = TransferData(source, split.labelled, split.unlabelled, synthetic)
    without = replace(data, synthetic=None) if config.compare_synthetic and synthetic is not None else None
    metrics["adapters"] = {}
    if without is not None:
        metrics["synthetic_delta"] = {}
    elif config.compare_synthetic:
        progress.log("--compare-synthetic: no synthetic images are left, nothing to compare.")
    classifier = None
    brightness = json.dumps(image_brightness(torch.cat([split.labelled.images,
                                                        split.unlabelled.images])))
    for i, (name, adapter) in enumerate(plan.adapters.items()):
        # Both fits of a pair start from the same global RNG state (head initialisation),
        # so they differ only in the synthetic images; the run continues afterwards from
        # the state the first fit left, as it would without --compare-synthetic.
        rng_state = torch.get_rng_state()
        twin = copy.deepcopy(adapter) if without is not None else None
        model, result, seconds = fit_and_evaluate(adapter, encoder, data, split, config, device,
                                                  progress, name)
        # Per-step losses of adapters that train with gradient steps (TrainedAdapter).
        extras.setdefault("adapter_history", {})[name] = list(declared(adapter, "history",
                                                                       "adapters"))
        suffix = "" if len(plan.adapters) == 1 else f"-{name.replace('/', '_')}"
        meta = {"encoder": config.encoder, "adapter": name,
                "classes": json.dumps(list(target.class_names)),
                "target_brightness": brightness, "target_layout": target.layout}
        meta["fingerprint"] = json.dumps(fingerprint(model, device))
        atomic_save_tensors(folder / f"classifier{suffix}.safetensors", model.state_dict(), meta)
        metrics["adapters"][name] = {
            "steps": config.adapter_steps if declared(adapter, "trains_by_steps", "adapters")
            else None,  # None: it does not train by steps (a probe solved to convergence)
            "accuracy": result["accuracy"],
                                     "macro_f1": result["macro_f1"],
                                     "unlabelled_im": result["unlabelled_im"],
                                     "train_seconds": round(seconds, 2)}
        log.info("adapter %s: target accuracy %.4f, macro F1 %.4f (%.1f s)", name,
                 result["accuracy"], result["macro_f1"], seconds)
        if i == 0:  # the first adapter is the run's classifier and headline numbers
            metrics["target"], classifier = result, model
        timings[f"adapter:{name}"] = seconds
        if twin is not None:
            same_fit = "synthetic" not in adapter.uses
            if same_fit:
                other = result  # it never reads synthetic images: the same fit
            else:
                # The twin starts from the CPU state the first fit started from; every
                # generator (CUDA included) is put back afterwards, so later adapters see
                # the state they would see without --compare-synthetic.
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.set_rng_state(rng_state)
                    _, other, seconds = fit_and_evaluate(twin, encoder, without, split,
                                                         config, device, progress, name)
                timings[f"adapter:{name} (no synthetic)"] = seconds
            metrics["synthetic_delta"][name] = {**synthetic_delta(result, other, len(synthetic)),
                                                "same_fit": same_fit}
            log.info("adapter %s without synthetic images: accuracy %.4f (delta %+.4f)", name,
                     other["accuracy"], metrics["synthetic_delta"][name]["delta"])
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}

    # Unlabelled target images are documented with the adapted classifier's guesses.
    captions["unlabelled"] = captioner.caption(
        split.unlabelled.images, None, class_names=target.class_names, domain=target.domain,
        description=target.description,
        classifier=lambda images: predict_logits(classifier, encoder.preprocess(images),
                                                 device).softmax(1))

    from imgxfer import report

    report.write_captions(folder / "captions.jsonl", captions, source, split, synthetic)
    extras.update(source=source, split=split, synthetic=synthetic, captions=captions)
    report.write_report(folder, config, metrics, extras)
    # metrics.json last: its presence marks a finished run (--resume refuses those).
    atomic_write_json(folder / "metrics.json", metrics)
    # Finished: generator.safetensors holds the generator, the training state is not needed.
    (folder / TRAINING_CHECKPOINT).unlink(missing_ok=True)
    log.info("report written to %s", folder / "report.html")
    return RunResult(folder, metrics, config, extras)


@dataclass
class SeedsResult:
    folder: Path
    runs: list[RunResult]
    summary: dict[str, dict[str, float]]  # adapter -> accuracy/macro_f1 mean and std
    # adapter -> with/without/delta mean and std (runs with --compare-synthetic)
    synthetic_delta: dict[str, dict[str, float]] = field(default_factory=dict)
    generator: dict[str, float] = field(default_factory=dict)  # quality metrics mean and std

    def payload(self, seeds: list[int]) -> dict[str, Any]:
        """What summary.json holds."""
        out: dict[str, Any] = {"seeds": seeds, "adapters": self.summary}
        if self.synthetic_delta:
            out["synthetic_delta"] = self.synthetic_delta
        if self.generator:
            out["generator"] = self.generator
        return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds, per adapter."""
    summary: dict[str, dict[str, float]] = {}
    for name in runs[0].metrics["adapters"]:
        row: dict[str, float] = {"seeds": len(runs)}
        for key in ("accuracy", "macro_f1", "unlabelled_im", "train_seconds"):
            values = [r.metrics["adapters"][name].get(key) for r in runs]
            if all(isinstance(v, (int, float)) for v in values):  # IM needs unlabelled images
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        summary[name] = row
    return summary


def summarise_synthetic(runs: list[RunResult]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Mean and sample standard deviation over seeds of the synthetic delta (per adapter:
    ``with``, ``without``, ``delta``) and of the generator quality metrics; empty when
    the runs have none."""
    delta: dict[str, dict[str, float]] = {}
    if all("synthetic_delta" in r.metrics for r in runs):
        for name in runs[0].metrics["synthetic_delta"]:
            row: dict[str, float] = {"seeds": len(runs)}
            for key in ("with", "without", "delta"):
                mean, std = _mean_std([r.metrics["synthetic_delta"][name][key] for r in runs])
                row[f"{key}_mean"], row[f"{key}_std"] = mean, std
            delta[name] = row
    generator: dict[str, float] = {}
    for key in ("cas", "cas_real", "label_kept", "fid", "kid_mean", "fid_real", "kid_real_mean"):
        values = [r.metrics.get("generator", {}).get(key) for r in runs]
        if values and all(isinstance(v, (int, float)) for v in values):
            generator[f"{key}_mean"], generator[f"{key}_std"] = _mean_std(values)
    return delta, generator


def run_seeds(config: RunConfig, seeds: list[int], *, progress: Progress = NullProgress(),
              registry: Registry | None = None) -> SeedsResult:
    """The same config under several seeds: ``<out>/<stamp>-<name>/seed-<k>/`` run
    folders plus ``summary.json`` with mean ± std per adapter (and of the synthetic delta
    and generator quality when the runs have them)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct seeds, got {seeds!r}.")
    plans = [prepare(replace(config, seed=seeds[0]), registry)]  # checks input first
    parent = create_run_dir(config.out, config.name)
    runs = []
    for i, seed in enumerate(seeds):
        plan = plans[0] if i == 0 else prepare(replace(config, seed=seed), registry)
        progress.log(f"seed {seed} ({i + 1}/{len(seeds)})")
        runs.append(execute(plan, progress=progress, folder=parent / f"seed-{seed}"))
    result = SeedsResult(parent, runs, summarise(runs), *summarise_synthetic(runs))
    atomic_write_json(parent / "summary.json", result.payload(seeds))
    return result
