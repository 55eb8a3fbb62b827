"""A dense run (``--task segment|detect``) from config to run folder.

The chain mirrors classification's (docs/architecture.md, "Segmentation and
detection"): :func:`prepare` checks and builds everything before a folder exists (the
scene datasets, the encoder read as a pyramid with its head, the adapters and, for
``--synthesis translate``, the generator); :func:`run_stages` trains the model on the
labelled source scenes once (``encoder_steps``), translates source scenes into the
target's style when a generator runs (keeping their masks and boxes), fits a copy of
the source model with each adapter (``adapter_steps``), evaluates each on the target's
test scenes, saves it and writes the report. The folder, its log and a failure record
come from :func:`imgxfer.run.execute.execute`, as for classification."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch

from imgxfer import __version__
from imgxfer.core.budget import Budget
from imgxfer.core.config import (
    AUTO,
    NONE,
    RunConfig,
    augment_notice,
    resolve_augment,
    with_mode_steps,
)
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import TransferData
from imgxfer.data.scenes import SceneDataset, SceneSplit, align_scene_classes, scene_split
from imgxfer.nn.dense.model import DenseModel, check_head
from imgxfer.nn.dense.training import Recipe, colours_for, train
from imgxfer.plugin import provenance
from imgxfer.plugin.protocols import declared
from imgxfer.plugin.registry import Registry
from imgxfer.run.execute import RunResult
from imgxfer.tasks.dense import evaluate

log = logging.getLogger("imgxfer")


@dataclass
class DensePlan:
    """Everything a dense run needs, built and checked before anything is written."""

    config: RunConfig
    device: torch.device
    source: SceneDataset
    split: SceneSplit
    model: DenseModel
    adapters: dict[str, Any]
    generator: Any = None

    def run(self, folder: Path, progress: Progress, resume: bool = False) -> RunResult:
        return RunResult(folder, run_stages(self, folder, progress, resume), self.config)


def load_scenes(config: RunConfig, registry: Registry) -> tuple[SceneDataset, SceneSplit]:
    source = _scenes(registry, config, "source", config.seed)
    target = _scenes(registry, config, "target", config.seed + 1)
    source = align_scene_classes(source, target)
    return source, scene_split(target, config.shots, test_fraction=config.test_fraction,
                               seed=config.seed)


def _scenes(registry: Registry, config: RunConfig, role: str, seed: int) -> SceneDataset:
    name = getattr(config, role)
    data = registry.build("datasets", name, config.options[role], seed=seed, task=config.task)
    if not isinstance(data, SceneDataset):
        raise UserError(f"{role} {name!r} holds labelled images for --task classify, not "
                        f"scenes with {'masks' if config.task == 'segment' else 'boxes'}; "
                        "use digit-scenes:syndigits|mnist|mnist-m, masks:PATH or coco:PATH.")
    if config.task not in data.tasks:
        has = " and ".join(sorted(data.tasks))
        raise UserError(f"{role} {name!r} has no {'masks' if config.task == 'segment' else 'boxes'}"
                        f" (its annotations serve --task {has}), so it cannot be used to "
                        f"{config.task}.")
    return data


def prepare(config: RunConfig, registry: Registry) -> DensePlan:
    """The dense counterpart of :func:`imgxfer.tasks.classify.plan.prepare`: every user mistake that can
    be found before training is one sentence here."""
    from imgxfer.core.runfolder import check_out_dir
    from imgxfer.tasks.classify.plan import resolve_device, seed_everything

    config.validate()
    check_dense(config)
    device = resolve_device(config.device)
    check_out_dir(config.out)
    components = [(k, n) for k, n in config.components() if k != "captioners"]  # no captions
    for kind, name in components:
        provenance.require(registry, config, kind, name, config.task)
    head = check_head(config.head, config.task)
    seed_everything(config.seed)
    source, split = load_scenes(config, registry)
    check_sizes(config, source, split.test)
    config = resolve_augment(fit_to_scenes(config, registry, source),
                             source.images.shape[1], split.test.images.shape[1])
    colours_for(config.augment, config.task)  # a warping policy is refused here
    make: Callable[[str, str, dict[str, Any]], Any] = (lambda kind, name, options: registry.build(
        kind, name, options, seed=config.seed, task=config.task, augment=config.augment))
    encoder = make("encoders", config.encoder, config.options["encoder"])
    size = cast(tuple[int, int], tuple(source.images.shape[-2:]))  # (H, W)
    model = DenseModel(encoder, head, source.class_names, size)
    adapters = {name: make("adapters", name,
                           config.options["adapter"] if name == config.adapter else {})
                for name in config.adapter_names()}
    generator = None
    if config.generator != NONE:
        generator = make("generators", config.generator, config.options["generator"])
        check_translate(config, generator, source, split)
        if config.synthesis == AUTO:  # the one mode a dense run has
            config = replace(config, synthesis="translate", synthesis_reason=(
                f"auto: a --task {config.task} run makes images only by translating "
                "labelled source scenes"))
        config = with_mode_steps(config)
    check_adapters(config, adapters, source, split, generator is not None)
    config = replace(config, provenance=provenance.record(config, registry, encoder, components))
    return DensePlan(config, device, source, split, model, adapters, generator)


def check_dense(config: RunConfig) -> None:
    """What a dense run cannot do, each one sentence."""
    if config.generator != NONE and config.synthesis not in ("translate", AUTO):
        raise UserError(f"--task {config.task} makes images only by translating labelled "
                        "source scenes (their masks and boxes kept): add --synthesis "
                        "translate, or use --generator none.")
    if config.synthetic_filter:
        raise UserError(f"--synthetic-filter is for --task classify; compare --task "
                        f"{config.task} runs with and without --generator.")


def check_adapters(config: RunConfig, adapters: dict[str, Any], source: SceneDataset,
                   split: SceneSplit, translates: bool) -> None:
    """Before any training: every adapter that trains has a labelled set to train on
    (``target-only`` at 0 shots has none), the source can spare a tenth for scoring the
    source model, and DeepLabV3's pooled BatchNorm gets batches of 2 or more."""
    if len(source) < 2:
        raise UserError(f"source {config.source!r} has {len(source)} scene; a dense run "
                        "needs 2 or more (a tenth is held out to score the source model).")
    # TransferData's fields are typed for classification; a dense adapter gets scenes.
    data = TransferData(cast(Any, source), cast(Any, split.labelled),
                        cast(Any, split.unlabelled), cast(Any, source if translates else None))
    for name, adapter in adapters.items():
        has = getattr(adapter, "labelled", None)
        if declared(adapter, "trains_by_steps", "adapters") and has and not has(data):
            needs = adapter.needs() if hasattr(adapter, "needs") else ""
            raise UserError(f"{name} has no labelled scenes to train on"
                            f"{f' ({needs})' if needs else ''}.")
        recipe = getattr(adapter, "recipe", None)
        if config.head == "deeplabv3" and recipe is not None and recipe.batch_size < 2:
            raise UserError(f"{name}: batch_size 1 cannot train the deeplabv3 head (its "
                            "pooled BatchNorm needs 2 or more scenes per batch).")


def check_sizes(config: RunConfig, source: SceneDataset, target: SceneDataset) -> None:
    """A dense model reads square scenes of one size (its masks come out at that size)."""
    sizes = {role: tuple(data.images.shape[-2:]) for role, data in
             (("source", source), ("target", target))}
    if any(h != w for h, w in sizes.values()) or sizes["source"] != sizes["target"]:
        shown = ", ".join(f"{role} {h}x{w}" for role, (h, w) in sizes.items())
        raise UserError(f"--task {config.task} reads square scenes of one size, and these are "
                        f"{shown}; read both at one size with --source-opt size=N "
                        "--target-opt size=N.")


def check_translate(config: RunConfig, generator: Any, source: SceneDataset,
                    split: SceneSplit) -> None:
    """Before anything trains: a generator that can translate, unlabelled target scenes
    to learn the style from and source scenes with objects to learn the content from."""
    from imgxfer.tasks.dense.translate import require_objects

    if "translate" not in declared(generator, "synthesis", "generators"):
        raise UserError(f"generator {config.generator!r} cannot translate images "
                        "(--synthesis translate), which is how a dense run makes them.")
    if not len(split.unlabelled):
        raise UserError("--synthesis translate learns the target's style from its unlabelled "
                        "scenes, and none are left; lower --shots or --test-fraction.")
    require_objects(source)


# The largest side a generator (any with an image_size option) translates scenes at by
# default; scenes are resized to it and back. On the selection pair's segment cells the
# gan's 64-px translator scored lower than its 32-px one at the same 600 steps (seed 0:
# 0.358 against 0.403 mIoU) and costs about four times as much per step; every dense
# translation in docs/benchmarks.md ran at 32 px.
GENERATOR_SIDE = 32


def generator_side(side: int) -> int:
    """The largest power of two at most ``side`` and :data:`GENERATOR_SIDE` (the gan
    works at powers of two): 32 for 64- or 48-px scenes, 16 for 24-px ones."""
    return 1 << (min(side, GENERATOR_SIDE).bit_length() - 1)


def fit_to_scenes(config: RunConfig, registry: Registry, source: SceneDataset) -> RunConfig:
    """The encoder works at the scenes' own size and the generator at
    :func:`generator_side`: their ``input_size`` / ``image_size``
    (and smallcnn's ``in_channels``: colour) are set from the data unless the user set
    them; config.toml records them, so predict rebuilds the same."""
    side = int(source.images.shape[-1])
    stages = [("encoder", config.encoder, "input_size", side)]
    if config.generator != NONE:
        stages.append(("generator", config.generator, "image_size", generator_side(side)))
    options = dict(config.options)
    for stage, name, key, size in stages:
        defaults = registry.get(f"{stage}s", name, config.task).defaults()
        own = dict(options[stage])
        if key in defaults and key not in own:
            own[key] = size
        if defaults.get("in_channels") == 0 and own.get("in_channels", 0) == 0:
            own["in_channels"] = 3
        options[stage] = own
    return replace(config, options=options)


def run_stages(plan: DensePlan, folder: Path, progress: Progress, resume: bool = False) -> Any:
    """Source model, translated scenes, each adapter, evaluation, report."""
    from imgxfer.tasks.dense import record, report

    config, split = plan.config, plan.split
    log.info("%s: source %s: %d scenes; target %s: %d labelled, %d unlabelled, %d test",
             config.task, plan.source.domain, len(plan.source), split.test.domain,
             len(split.labelled), len(split.unlabelled), len(split.test))
    if notice := augment_notice(config):  # what --augment auto chose
        progress.log(notice)
    started = time.perf_counter()
    model = plan.model.to(plan.device)
    source, held_out = hold_out(plan.source, plan.config.seed)
    source_history = train_source(plan, model, source, progress)
    _, source_val = evaluate.evaluate(model, held_out, plan.device)
    log.info("source model on %d held-out source scenes: %s", len(held_out),
             evaluate.headline(source_val, config.task))
    synthetic, generator_info = translate(plan, source, folder, progress, resume)
    # TransferData's fields are typed for classification; a dense adapter gets scenes.
    data = TransferData(cast(Any, source), cast(Any, split.labelled),
                        cast(Any, split.unlabelled), cast(Any, synthetic))
    results = {name: fit_adapter(plan, name, adapter, model, data, folder, progress)
               for name, adapter in plan.adapters.items()}
    metrics = record.DenseRunMetrics(
        __version__, config.seed, str(plan.device), config.task, record.describe(plan),
        {**model.describe(), "source_val": source_val},
        {name: r.metrics for name, r in results.items()},
        generator_info, {"total": round(time.perf_counter() - started, 1)})
    report.write(folder, plan, metrics, results, source_history, synthetic)
    record.write(folder, metrics)
    return metrics


def hold_out(source: SceneDataset, seed: int) -> tuple[SceneDataset, SceneDataset]:
    """A seeded tenth of the source scenes (at least one) kept out of all training, to
    report how well the source model does in its own domain (``model.source_val``)."""
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(source) // 10)
    return source.subset(order[n_val:]), source.subset(order[:n_val])


def train_source(plan: DensePlan, model: DenseModel, source: SceneDataset,
                 progress: Progress) -> list[float]:
    """The model every adapter starts from: encoder and head trained on the labelled
    source scenes for ``encoder_steps`` (seeded, batch 16, AdamW 1e-3, their colours
    randomised under ``--augment style``)."""
    if plan.config.encoder_steps == 0:
        return []
    budget = Budget(plan.config.encoder_steps).start()
    recipe = Recipe(seed=plan.config.seed, colours=colours_for(plan.config.augment))
    return train(model, {"source": (source, 1.0)}, recipe,
                 budget=budget, device=plan.device, progress=progress,
                 what=f"{plan.config.task} model: train on source")


@dataclass
class Fitted:
    model: DenseModel
    metrics: dict[str, Any]
    predictions: list[Any]
    history: list[float]


def fit_adapter(plan: DensePlan, name: str, adapter: Any, source_model: DenseModel,
                data: TransferData, folder: Path, progress: Progress) -> Fitted:
    """A copy of the source model fitted by ``adapter``, evaluated and saved."""
    from imgxfer.tasks.dense import artifacts

    model = copy.deepcopy(source_model)
    # Every adapter draws from the same RNG state (dropout, a discriminator's weights),
    # so its result does not depend on the adapters compared before it.
    torch.manual_seed(plan.config.seed)
    budget = Budget(plan.config.adapter_steps).start()
    started = time.perf_counter()
    model = adapter.fit(model, data, budget=budget, progress=progress, device=plan.device)
    seconds = time.perf_counter() - started
    predictions, metrics = evaluate.evaluate(model, plan.split.test, plan.device)
    metrics.update(steps=plan.config.adapter_steps if declared(
        adapter, "trains_by_steps", "adapters") else None, train_seconds=round(seconds, 1))
    log.info("adapter %s: %s", name, evaluate.headline(metrics, plan.config.task))
    artifacts.save(folder, name, model)
    return Fitted(model, metrics, predictions, list(getattr(adapter, "history", []) or []))


def translate(plan: DensePlan, source: SceneDataset, folder: Path, progress: Progress,
              resume: bool = False) -> tuple[SceneDataset | None, dict[str, Any] | None]:
    """With a generator: the training source scenes translated into the target's style,
    their masks and boxes kept (CyCADA's labels for free)."""
    if plan.generator is None:
        return None, None
    from imgxfer.tasks.dense.translate import translate_scenes

    return translate_scenes(plan, source, folder, progress, resume)
