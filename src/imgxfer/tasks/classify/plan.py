"""Before a run writes anything: validate the config, look up and build every component
through the registry, load the data. Every user mistake that can be found before
training is raised here (docs/architecture.md, "The chain")."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgxfer.core import distributed
from imgxfer.core.budget import Budget, parse_duration
from imgxfer.core.config import (
    AUTO,
    FILTER_PROBE,
    NONE,
    RunConfig,
    check_device,
    resolve_augment,
    with_mode_steps,
)
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.core.runfolder import check_out_dir
from imgxfer.data import images
from imgxfer.data.dataset import ImageDataset, Split
from imgxfer.plugin import provenance
from imgxfer.plugin.protocols import declared, encoder_input_size
from imgxfer.plugin.registry import Registry
from imgxfer.run.execute import RunResult
from imgxfer.tasks.classify.run import run_stages
from imgxfer.tasks.classify.stages.data import load_data, resolve_auto_options
from imgxfer.tasks.classify.synthesis import check_mode, choose_mode


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
    # --synthetic-filter-by: the adapter that scores synthetic images (None: the probe).
    filter_scorer: Any = None

    def run(self, folder: Path, progress: Progress, resume: bool = False) -> RunResult:
        return run_stages(self, folder, progress, resume)


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


def generator_budget(config: RunConfig) -> Budget | None:
    """Steps and/or time; ``generator_steps = 0`` with a time is a time-only budget
    (``imgxfer run --generator-budget``). ``prepare`` calls it again once the mode's
    default steps (-1) are resolved (:func:`imgxfer.core.config.with_mode_steps`)."""
    gen_time = parse_duration(config.generator_time) if config.generator_time else None
    steps = config.generator_steps
    if not (steps > 0 or gen_time):
        return None
    return Budget(steps if steps > 0 else None, gen_time)


def prepare(config: RunConfig, registry: Registry) -> Plan:
    """Validate ``config``, look up and build every component and load the data, raising
    each user mistake as a :class:`UserError` before any folder is created."""
    config.validate()
    # Under a launcher (accelerate launch, torchrun) each process has its own device.
    device = resolve_device(config.device)  # refuses a device that is not there
    device = distributed.setup(config.device, config.mixed_precision) or device
    images.set_workers(None if config.workers < 0 else config.workers)
    check_out_dir(config.out)
    # Look every component up first, so a typo fails in a second, not after data loading
    # (a resumed run whose plugin is gone names the distribution it needs).
    for kind, name in config.components():
        provenance.require(registry, config, kind, name)
    budget = generator_budget(config)  # a bad duration fails before data is loaded
    seed_everything(config.seed)
    with distributed.main_first():  # a download happens once, in the main process
        source, split = load_data(config, registry)
    config = resolve_augment(resolve_auto_options(config, registry, source, split.test),
                             source.images.shape[1], split.test.images.shape[1])

    def make(kind: str, name: str, options: dict[str, Any]) -> Any:
        return registry.build(kind, name, options, seed=config.seed, augment=config.augment)

    encoder = make("encoders", config.encoder, config.options["encoder"])
    # Files and stored originals are read at the size the encoder asks for.
    size = max(encoder_input_size(encoder))
    source, split = source.at_size(size), split.at_size(size)
    captioner = make("captioners", config.captioner, config.options["captioner"])
    # The [adapter] options belong to the adapter named there; compared ones use defaults.
    adapters = {name: make("adapters", name,
                           config.options["adapter"] if name == config.adapter else {})
                for name in config.adapter_names()}
    generator = (make("generators", config.generator, config.options["generator"])
                 if config.generator != NONE else None)
    check_zero_steps(config, adapters, generator)
    for adapter in adapters.values():  # an adapter that needs a particular encoder
        check_encoder = declared(adapter, "check_encoder", "adapters")
        if check_encoder is not None:
            check_encoder(encoder)
    if generator is not None:
        config = with_mode_steps(resolve_synthesis(config, generator, split))
        check_generator_mode(config, generator, registry, split)
        budget = generator_budget(config)
    # config.toml records where each component came from (imgxfer.plugin.provenance).
    config = replace(config, provenance=provenance.record(config, registry, encoder,
                                                          config.components()))
    return Plan(config, device, source, split, encoder, captioner, generator,
                adapters, budget, filter_scorer(config, make))


def filter_scorer(config: RunConfig, make: Any) -> Any:
    """The adapter ``--synthetic-filter-by`` names (built with the [adapter] options when
    it is the run's adapter), or ``None`` for the built-in probe; an adapter that cannot
    score images without fitting is refused."""
    name = config.synthetic_filter_by
    if config.synthetic_filter == 0 or name == FILTER_PROBE:
        return None
    scorer = make("adapters", name, config.options["adapter"] if name == config.adapter else {})
    if not declared(scorer, "scores_images", "adapters"):
        raise UserError(f"--synthetic-filter-by {name}: this adapter cannot score images "
                        f"without training (it does not declare scores_images); use "
                        f"{FILTER_PROBE} or a zero-shot adapter such as clip:PATH.")
    return scorer


def resolve_synthesis(config: RunConfig, generator: Any, split: Split) -> RunConfig:
    """The config with ``--synthesis auto`` replaced by the mode it chooses and the reason
    (config.toml records both), checked again as if the user had asked for that mode."""
    if config.synthesis != AUTO:
        return config
    mode, reason = choose_mode(generator, config.generator, len(split.unlabelled))
    config = replace(config, synthesis=mode, synthesis_reason=reason)
    config.validate()
    return config


def check_generator_mode(config: RunConfig, generator: Any, registry: Registry,
                         split: Split) -> None:
    check_mode(config.synthesis, generator, config.generator, registry)
    if config.synthesis == "translate" and not len(split.unlabelled):
        raise UserError("--synthesis translate learns the target's style from its unlabelled "
                        f"images, and {config.shots} shots per class leave none besides the "
                        "test split; lower --shots.")


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
