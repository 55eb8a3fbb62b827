"""Stage 5: every adapter, each from the same source-trained encoder and the same data,
evaluated on the held-out target test split and saved; with ``--compare-synthetic`` each
adapter that reads synthetic images is fitted a second time without them (its twin)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgxfer.core import runfolder
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Labelled, Progress
from imgxfer.data.dataset import ImageDataset, Split, TransferData
from imgxfer.data.images import ConcatImages
from imgxfer.nn.classifier import Classifier
from imgxfer.nn.probe import fit_probe
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.protocols import declared
from imgxfer.run import artifacts
from imgxfer.run.metrics import SOURCE_MODEL, AdapterMetrics, SyntheticDelta, TargetMetrics, Timings
from imgxfer.tasks.classify.evaluation import classification_metrics, information_maximization
from imgxfer.tasks.classify.stages.explain import Explainer

if TYPE_CHECKING:  # the plan imports the stages through its run
    from imgxfer.tasks.classify.plan import Plan

log = logging.getLogger("imgxfer")
# How many source images the source model's head (metrics.SOURCE_MODEL) is fitted on at
# most (a streamed source may hold far more).
BASELINE_IMAGES = 2000


@dataclass
class Adapted:
    """The run's classifier (the first adapter's), its full evaluation, every adapter's
    summary, the with/without-synthetic deltas and the adapters' loss histories."""

    classifier: Classifier
    target: TargetMetrics
    adapters: dict[str, AdapterMetrics]
    deltas: dict[str, SyntheticDelta] | None
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    explanations: dict[str, Any] | None = None  # metrics.json's, see stages/explain.py
    baselines: dict[str, AdapterMetrics] | None = None


def adapt(plan: Plan, synthetic: ImageDataset | None, folder: Path,
          progress: Progress, timings: Timings) -> Adapted:
    config, split = plan.config, plan.split
    data = TransferData(plan.source, split.labelled, split.unlabelled, synthetic)
    compare = config.compare_synthetic and synthetic is not None
    if config.compare_synthetic and synthetic is None and plan.generator is not None \
            and reads_synthetic(plan.adapters.values()):  # the filter kept none
        progress.log("--compare-synthetic: no synthetic images are left, nothing to compare.")
    brightness = artifacts.image_brightness(ConcatImages([split.labelled.images,
                                                          split.unlabelled.images]))
    first: tuple[Classifier, TargetMetrics] | None = None  # the run's classifier
    adapters: dict[str, AdapterMetrics] = {}
    deltas: dict[str, SyntheticDelta] = {}
    history: dict[str, list[dict[str, float]]] = {}
    explainer = Explainer(split.test, len(plan.adapters))
    with timings.measure("baseline"):
        baselines = {SOURCE_MODEL: source_model(plan)}
    for name, adapter in plan.adapters.items():
        # Both fits of a pair start from the same global RNG state (head initialisation),
        # so they differ only in the synthetic images.
        rng_state = torch.get_rng_state()
        # The twin without synthetic images, for the adapters that read them (for the
        # others it would be the same fit: no row rather than a delta of 0).
        twin = copy.deepcopy(adapter) if compare and reads_synthetic([adapter]) else None
        shown = Labelled(progress, " (with synthetic)") if twin is not None else progress
        model, seconds = fit_adapter(plan, adapter, data, shown, name)
        predicted = test_predictions(model, plan.encoder, split, plan.device)
        result = evaluate(model, plan.encoder, split, plan.device, predicted)
        timings[f"adapter:{name}"] = seconds
        history[name] = list(declared(adapter, "history", "adapters"))
        artifacts.save_classifier(
            folder / runfolder.classifier_file(name, len(plan.adapters) > 1), model,
            encoder=config.encoder, adapter=name, class_names=list(split.test.class_names),
            brightness=brightness, layout=split.test.layout, device=plan.device)
        adapters[name] = AdapterMetrics(
            # None: it does not train by steps (a probe solved to convergence)
            config.adapter_steps if declared(adapter, "trains_by_steps", "adapters") else None,
            result.accuracy, result.macro_f1, result.unlabelled_im, round(seconds, 2))
        log.info("adapter %s: target accuracy %.4f, macro F1 %.4f (%.1f s)", name,
                 result.accuracy, result.macro_f1, seconds)
        first = first or (model, result)
        explainer.add(name, model, predicted)  # while this adapter's classifier exists
        if twin is not None:
            deltas[name] = fit_twin(plan, twin, data, result, rng_state, progress,
                                    timings, name)
    assert first is not None  # a run has at least one adapter (RunConfig.adapter_names)
    classifier, target = first
    explanations = explainer.finish(folder)
    timings["explanations"] = explainer.seconds
    return Adapted(classifier, target, adapters, deltas or None, history,
                   explanations, baselines)


def reads_synthetic(adapters: Iterable[Any]) -> bool:
    """Whether any of ``adapters`` trains on synthetic images: declares it in ``uses``, or
    declares ``uses = None`` (not known before it runs)."""
    return any(a.uses is None or "synthetic" in a.uses for a in adapters)


def source_model(plan: Plan) -> AdapterMetrics:
    """The baseline every run is judged against: what the source alone gives on the
    target test split. The run's encoder as the source trained it, with a logistic head
    fitted on (up to :data:`BASELINE_IMAGES` of) the source images: no target image, no
    training steps, deterministic, a few seconds; the global RNG is left as it was."""
    source = plan.source
    if len(source) > BASELINE_IMAGES:
        pick = torch.randperm(len(source), generator=torch.Generator().manual_seed(
            plan.config.seed))[:BASELINE_IMAGES]
        source = source.subset(pick.sort().values)
    split = plan.split
    data = TransferData(source, split.labelled, split.unlabelled, None)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        model = fit_probe(copy.deepcopy(plan.encoder), data, {"source": 1.0}, c=1.0,
                          max_iter=1000, adabn=False, device=plan.device, name=SOURCE_MODEL)
    result = evaluate(model, plan.encoder, split, plan.device)
    return AdapterMetrics(None, result.accuracy, result.macro_f1, result.unlabelled_im,
                          round(time.perf_counter() - t0, 2))


def fit_twin(plan: Plan, twin: Any, data: TransferData, result: TargetMetrics,
             rng_state: torch.Tensor, progress: Progress, timings: Timings,
             name: str) -> SyntheticDelta:
    """The adapter again without the synthetic images, from the RNG state its first fit
    started from; every generator (CUDA included) is put back afterwards, so later
    adapters see the state they would see without --compare-synthetic."""
    device = plan.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(rng_state)
        _, other, seconds = fit_and_evaluate(plan, twin, replace(data, synthetic=None),
                                             Labelled(progress, " (without synthetic)"), name)
    timings[f"adapter:{name} (no synthetic)"] = seconds
    assert data.synthetic is not None  # a twin exists only where there are synthetic images
    delta = SyntheticDelta.between(result, other, len(data.synthetic), False)
    log.info("adapter %s without synthetic images: accuracy %.4f (delta %+.4f)", name,
             other.accuracy, delta.delta)
    return delta


def fit_and_evaluate(plan: Plan, adapter: Any, data: TransferData,
                     progress: Progress, name: str = "") -> tuple[Classifier, TargetMetrics, float]:
    """Fit ``adapter`` on a copy of the plan's encoder (adapters train it in place) and evaluate
    the classifier on the held-out target test split: (model, metrics, train seconds).
    The metrics include the IM score on the unlabelled target images (``unlabelled_im``,
    ``None`` without any), which uses no labels."""
    model, seconds = fit_adapter(plan, adapter, data, progress, name)
    return model, evaluate(model, plan.encoder, plan.split, plan.device), seconds


def fit_adapter(plan: Plan, adapter: Any, data: TransferData, progress: Progress,
                name: str = "") -> tuple[Classifier, float]:
    """Fit ``adapter`` on a copy of the plan's encoder within the run's adapter steps:
    (model, train seconds). `imgxfer tune` calls it where there is no split to evaluate
    on (its IM objective)."""
    t0 = time.perf_counter()
    model = adapter.fit(copy.deepcopy(plan.encoder).to(plan.device), data,
                        budget=Budget(plan.config.adapter_steps).start(),
                        progress=progress, device=plan.device)
    seconds = time.perf_counter() - t0
    if not isinstance(model, Classifier):
        raise UserError(f"adapter {name!r} returned a {type(model).__name__}, not an "
                        "imgxfer.nn.classifier.Classifier (the encoder and a linear head, which "
                        "classifier.safetensors holds and imgxfer predict rebuilds); see "
                        "imgxfer.plugin.protocols.Adapter.")
    return model, seconds


def evaluate(model: Classifier, encoder: Any, split: Split, device: torch.device,
             predicted: torch.Tensor | None = None) -> TargetMetrics:
    """The classifier's metrics on the test split (``predicted``: its classes of the test
    images, when the caller has them already)."""
    if predicted is None:
        predicted = test_predictions(model, encoder, split, device)
    result: TargetMetrics = TargetMetrics.from_json(classification_metrics(
        split.test.labels.tolist(), predicted.tolist(), split.test.class_names))
    if len(split.unlabelled) and len(split.test.class_names) > 1:
        result.unlabelled_im = unlabelled_im(model, encoder, split.unlabelled, device)
    return result


def test_predictions(model: Classifier, encoder: Any, split: Split, device: torch.device
                     ) -> torch.Tensor:
    """The predicted class of each test image."""
    return predict_logits(model, split.test.images, device,
                          preprocess=encoder.preprocess).argmax(1).cpu()


def unlabelled_im(model: Classifier, encoder: Any, unlabelled: ImageDataset,
                  device: torch.device) -> float:
    """The IM score of ``model`` on unlabelled images (their labels are not read)."""
    logits = predict_logits(model, unlabelled.images, device, preprocess=encoder.preprocess)
    return information_maximization(logits)["im"]
