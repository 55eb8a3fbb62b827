"""Stage 4: train the generator, synthesise labelled target images (``--synthesis``),
save it, filter the images and measure them."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from imgxfer.core import runfolder
from imgxfer.core.budget import Budget
from imgxfer.core.config import FILTER_PROBE, RunConfig
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import GeneratorData, ImageDataset, Split, TransferData
from imgxfer.data.images import CHUNK, ConcatImages
from imgxfer.nn.preprocess import match_channels
from imgxfer.nn.probe import fit_probe
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.protocols import Encoder, FitResult, checkpoint_args
from imgxfer.run import artifacts
from imgxfer.run.metrics import GeneratorMetrics, Timings
from imgxfer.tasks.classify.synthesis import synthesise

if TYPE_CHECKING:  # the plan imports the stages through its run
    from imgxfer.tasks.classify.plan import Plan

log = logging.getLogger("imgxfer")


@dataclass
class Generated:
    """What the generator stage hands on: the synthetic images (``None`` when none are
    left), their prompts, the real images they were made from (image-to-image modes),
    the generator's loss history and metrics.json's ``generator`` section."""

    synthetic: ImageDataset | None
    metrics: GeneratorMetrics
    prompts: list[str] = field(default_factory=list)
    inputs: ImageDataset | None = None
    history: dict[str, list[float]] = field(default_factory=dict)


def generate(plan: Plan, captions: dict[str, list[str]], folder: Path,
             progress: Progress, resume: bool, timings: Timings) -> Generated:
    config, generator, split = plan.config, plan.generator, plan.split
    target = split.test
    with timings.measure("generator_fit"):
        fitted = train_generator(plan, generator_data(config, plan.source, split, captions),
                                 folder, progress, resume)
    with timings.measure("generator_sample"):
        made = synthesise(config.synthesis, generator, plan.captioner, plan.source, split,
                          captions["target"], per_class=config.synthetic_per_class,
                          seed=config.seed, device=plan.device)
        synthetic = None if made.images is None else ImageDataset(
            check_images(made.images, len(made.labels), config.generator,
                         "sample" if made.inputs is None else "edit"),
            made.labels, list(target.class_names), f"synthetic-{target.domain}",
            target.description)
    artifacts.save_generator(folder / runfolder.GENERATOR, config.generator, generator,
                             config.options["generator"], target.class_names)
    out = Generated(synthetic, GeneratorMetrics(
        name=config.generator, synthesis=config.synthesis,
        conditioning=sorted(generator.conditioning), steps=fitted.steps,
        synthetic_images=0 if synthetic is None else len(synthetic)),
        list(made.prompts) if synthetic is not None else [], made.inputs, fitted.losses)
    if synthetic is not None and config.synthetic_filter > 0:
        with timings.measure("synthetic_filter"):
            keep_confident(out, plan)
    measure_quality(out, plan, progress, timings)
    log.info("generator %s: %s", config.generator, out.metrics.quality())
    return out


def keep_confident(out: Generated, plan: Plan) -> None:
    """``--synthetic-filter``: keep only the images the probe (or the adapter of
    ``--synthetic-filter-by``) finds confidently right."""
    assert out.synthetic is not None  # called only when there are synthetic images
    synthetic, kept, out.metrics.filter = filter_synthetic(
        out.synthetic, plan.encoder, plan.source, plan.split, plan.config.synthetic_filter,
        plan.device, scorer=plan.filter_scorer, scorer_name=plan.config.synthetic_filter_by)
    out.synthetic = synthetic
    out.prompts = [p for p, k in zip(out.prompts, kept.tolist(), strict=True) if k]
    if out.inputs is not None:
        out.inputs = out.inputs.subset(torch.nonzero(kept).flatten())
    out.metrics.synthetic_images = 0 if synthetic is None else len(synthetic)


def measure_quality(out: Generated, plan: Plan, progress: Progress,
                    timings: Timings) -> None:
    config = plan.config
    if out.synthetic is None or not config.quality:
        return
    if len(out.synthetic) < 2:
        progress.log("generator quality not measured: fewer than two synthetic images.")
        return
    progress.log("measuring the generator: CAS (two small classifiers) and FID/KID")
    with timings.measure("generator_quality"):
        quality = generator_quality_metrics(plan.encoder, out.synthetic, plan.split,
                                            steps=config.quality_steps, seed=config.seed,
                                            device=plan.device)
    merged = GeneratorMetrics.from_json({**out.metrics.to_json(), **quality})
    out.metrics = merged


def generator_data(config: RunConfig, source: ImageDataset, split: Split,
                   captions: dict[str, list[str]]) -> GeneratorData:
    """What the generator learns from: source images and target shots with their captions,
    and for ``--synthesis translate`` the unlabelled target images too."""
    target = split.test
    return GeneratorData(
        # One tensor: source images take the target's channel count (grey mnist digits
        # beside colour mnist-m ones become grey RGB).
        images=torch.cat([match_channels(source.images.tensor(), int(target.images.shape[1])),
                          split.labelled.images.tensor()]),
        labels=torch.cat([source.labels, split.labelled.labels]),
        captions=captions["source"] + captions["target"],
        domains=[source.domain] * len(source) + [target.domain] * len(split.labelled),
        class_names=list(target.class_names), target_domain=target.domain,
        synthesis=config.synthesis,
        unlabelled=split.unlabelled.images.tensor() if config.synthesis == "translate" else None)


def train_generator(plan: Plan, data: GeneratorData, folder: Path, progress: Progress,
                    resume: bool) -> FitResult:
    """Fit the plan's generator within its budget. One that declares ``resumable``
    checkpoints its training into the run folder, so an interrupted run continues there
    (``imgxfer run --resume FOLDER``)."""
    name, generator = plan.config.generator, plan.generator
    resumable = checkpoint_args(generator, folder / runfolder.TRAINING_CHECKPOINT, resume)
    if resume and not resumable:
        progress.log(f"{name} cannot resume its training; it starts again.")
    budget = plan.generator_budget or Budget(0)
    fitted = generator.fit(data, budget=budget.start(), progress=progress, device=plan.device,
                           **resumable)
    if not isinstance(fitted, FitResult):
        raise UserError(f"generator {name!r} broke its protocol: fit returned "
                        f"{type(fitted).__name__}, not an imgxfer.plugin.protocols.FitResult.")
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
                        "(see imgxfer.plugin.protocols.Generator).")
    return cast(torch.Tensor, images).cpu()  # a tensor: checked above


def filter_synthetic(synthetic: ImageDataset, encoder: Any, source: ImageDataset, split: Split,
                     threshold: float, device: torch.device, *, scorer: Any = None,
                     scorer_name: str = FILTER_PROBE
                     ) -> tuple[ImageDataset | None, torch.Tensor, dict[str, Any]]:
    """Keep the synthetic images given at least ``threshold`` probability for the class
    they were generated as (He et al. 2023, "Is synthetic data from generative models
    ready for image recognition?"): by ``scorer.score_images`` when a scorer is given (an
    adapter that declares ``scores_images``), else by :func:`probe_confidence`. Returns
    the kept images (or ``None``), the boolean mask and a summary for metrics.json."""
    if scorer is None:
        confidence = probe_confidence(synthetic, encoder, source, split, device)
    else:
        confidence = scorer_confidence(scorer, scorer_name, synthetic, device)
    kept = confidence >= threshold
    info = {"by": scorer_name, "threshold": threshold, "generated": len(synthetic),
            "kept": int(kept.sum()),
            "kept_per_class": torch.bincount(synthetic.labels[kept],
                                             minlength=synthetic.num_classes).tolist(),
            "mean_confidence": float(confidence.mean())}
    log.info("synthetic filter: kept %d of %d images (p >= %.2f)", info["kept"], len(synthetic),
             threshold)
    return (synthetic.subset(torch.nonzero(kept).flatten()) if kept.any() else None), kept, info


def probe_confidence(synthetic: ImageDataset, encoder: Any, source: ImageDataset, split: Split,
                     device: torch.device) -> torch.Tensor:
    """The probability a linear probe on the frozen encoder, fitted to the labelled
    source and target shots (AdaBN on the target), gives each synthetic image's class.
    The probe involves no randomness, and the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        probe = fit_probe(copy.deepcopy(encoder), TransferData(source, split.labelled,
                                                               split.unlabelled, None),
                          {"source": 1.0, "target": 1.0}, c=1.0, max_iter=1000, adabn=True,
                          device=device, name="synthetic_filter")
        proba = predict_logits(probe, synthetic.images, device,
                               preprocess=cast(Encoder, probe.encoder).preprocess).softmax(1)
    return proba.gather(1, synthetic.labels.view(-1, 1)).flatten()


def scorer_confidence(scorer: Any, name: str, synthetic: ImageDataset,
                      device: torch.device) -> torch.Tensor:
    """``scorer.score_images`` over the synthetic images, :data:`CHUNK` at a time, checked
    to be one probability per image."""
    parts = []
    for start, images in zip(range(0, len(synthetic), CHUNK), synthetic.images.chunks(CHUNK), strict=True):
        labels = synthetic.labels[start:start + len(images)]
        scores = scorer.score_images(images, labels, class_names=list(synthetic.class_names),
                                     description=synthetic.description, device=device)
        if (not isinstance(scores, torch.Tensor) or scores.shape != (len(images),)
                or not bool(((scores >= 0) & (scores <= 1)).all())):
            raise UserError(f"adapter {name!r} broke its protocol: score_images must return "
                            "one probability in [0, 1] per image (see imgxfer.plugin.protocols.Adapter).")
        parts.append(scores.detach().float().cpu())
    return torch.cat(parts) if parts else torch.empty(0)


def cas_steps(max_steps: int, n_images: int) -> int:
    """Training steps of each CAS classifier: about 20 epochs of ``n_images`` at batch 64,
    at least 30 and at most ``max_steps`` (tiny runs stay cheap, real ones are capped)."""
    return min(max_steps, max(30, 20 * -(-n_images // 64)))


def generator_quality_metrics(encoder: Any, synthetic: ImageDataset, split: Split, *,
                              steps: int, seed: int, device: torch.device) -> dict[str, Any]:
    """CAS, CAS real, label kept, FID and KID of the synthetic images against the target
    *test* split (used for evaluation only, as for the classifiers), in the run encoder's
    feature space, and how often they copy the labelled shots (``nearest_shot``). The real
    reference for CAS real is drawn from the target training images (labelled shots and
    unlabelled, with their true labels, used for this metric only)."""
    from imgxfer.tasks.classify.quality import generator_quality

    pool = ImageDataset(ConcatImages([split.labelled.images, split.unlabelled.images]),
                        torch.cat([split.labelled.labels, split.unlabelled.labels]),
                        list(split.test.class_names), split.test.domain,
                        split.test.description)
    return generator_quality(encoder, synthetic, split.test, pool,
                             cas_steps=cas_steps(steps, len(synthetic)), seed=seed,
                             device=device, shots=split.labelled)
