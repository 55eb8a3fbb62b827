"""`imgxfer tune`: search a run's tunable options (:mod:`imgxfer.plugin.tunable`) with Optuna,
scoring each trial without the target test split (docs/architecture.md, "Tuning").

The objective:

- every class has at least 2 labelled shots: stratified k-fold cross-validation over the
  shots. Each fold fits the adapter as the run would (source, the other shots, the
  unlabelled target images and, with a generator, synthetic images made from the other
  shots only) and scores accuracy on the held-out shots; the running mean is reported
  after each fold, so Optuna's pruner can stop a poor trial early.
- otherwise (0 or 1 shot per class): the IM score (:func:`imgxfer.tasks.classify.evaluation.
  information_maximization`) of the fitted classifier on the unlabelled target images.

The test split is dropped right after the data is loaded (:func:`without_test`), so no
trial can read it; ``imgxfer run --config best.toml`` measures the tuned config on it.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import optuna
import torch

from imgxfer.core.config import NONE, RunConfig
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Labelled, NullProgress, Progress
from imgxfer.core.runfolder import TENSORBOARD
from imgxfer.data.dataset import ImageDataset, Split, TransferData
from imgxfer.plugin.registry import Registry
from imgxfer.plugin.tunable import (
    Range,
    current_values,
    search_space,
    with_params,
    with_run_policy,
)
from imgxfer.run.metrics import Timings
from imgxfer.run.tracking import (
    TrackedRun,
    Tracker,
    hyperparameters,
    open_tracker,
    run_name,
    tracked,
)
from imgxfer.sweep.tune_report import STUDY_DB, shown_url, write_outputs
from imgxfer.tasks.classify.plan import Plan, prepare

log = logging.getLogger("imgxfer")

MAX_FOLDS = 5
DIRECTION: Final = "maximize"  # accuracy and IM: higher is better

if TYPE_CHECKING:
    # What Study.optimize calls after each trial (the study and the finished trial).
    TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass(frozen=True)
class Objective:
    """What a trial is scored by, in words for the summary."""

    kind: str  # "cv" or "im"
    folds: int
    why: str

    @property
    def label(self) -> str:
        return f"{self.folds}-fold CV accuracy" if self.kind == "cv" else "IM score"


def choose_objective(labelled: ImageDataset, unlabelled: ImageDataset,
                     folds: int | None) -> Objective:
    """k-fold CV where every class has 2 or more shots (k = the fewest shots of a class,
    at most 5, or ``folds``), the IM score otherwise; one sentence when neither works."""
    fewest = min(labelled.class_counts())
    if fewest >= 2:
        k = folds or min(fewest, MAX_FOLDS)
        if not 2 <= k <= fewest:
            raise UserError(f"--folds must be between 2 and {fewest} (the fewest labelled "
                            f"shots of a class), got {k}.")
        return Objective("cv", k, f"every class has {fewest} or more labelled shots, so "
                         f"each trial is scored by {k}-fold cross-validation over them")
    if folds is not None:
        raise UserError(f"--folds needs 2 or more labelled shots per class, and there are "
                        f"{fewest}; without it the tuner scores trials by the IM score.")
    if not len(unlabelled):
        raise UserError("with fewer than 2 shots per class the tuner scores trials by the IM "
                        "score on unlabelled target images, and there are none; lower --shots.")
    return Objective("im", 0, f"{fewest} labelled shot(s) per class leave none to hold out, "
                     f"so each trial is scored by the IM score (no labels) on the "
                     f"{len(unlabelled)} unlabelled target images")


def without_test(split: Split) -> Split:
    """The split with no test images left (an empty dataset that keeps the class names,
    domain and image shape the stages read from ``split.test``)."""
    empty = split.labelled.subset(torch.zeros(0, dtype=torch.long))
    return Split(split.labelled, split.unlabelled, empty)


def cv_folds(labelled: ImageDataset, unlabelled: ImageDataset, k: int, seed: int
             ) -> list[Split]:
    """k stratified folds of the labelled shots, each as a split: the other shots, every
    unlabelled image, and as ``test`` the held-out shots (what
    :func:`imgxfer.tasks.classify.stages.adapt.evaluate` scores)."""
    from sklearn.model_selection import StratifiedKFold

    labels = labelled.labels.numpy()
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Split(labelled.subset(torch.as_tensor(train)), unlabelled,
                  labelled.subset(torch.as_tensor(held)))
            for train, held in folds.split(np.zeros(len(labels)), labels)]


def tuning_config(config: RunConfig) -> RunConfig:
    """What each trial runs: the config without what only measures (generator quality
    against the test split, the with/without-synthetic twin)."""
    if config.compare:
        raise UserError("imgxfer tune searches one adapter's options; give --adapter "
                        "instead of compare.")
    return replace(config, quality=False, compare_synthetic=False)


@dataclass
class Tuner:
    """The Optuna objective: ``study.optimize(tuner, ...)``. Built once per invocation
    by :func:`prepare_tuner`; each call scores one trial."""

    plan: Plan  # with the test split dropped and the encoder already pretrained
    registry: Registry
    space: dict[str, Range]
    objective: Objective
    folds: list[Split]
    rng_state: torch.Tensor
    # --tracker: one tracker run per trial, in the tune folder (set once it exists).
    tracker: Tracker | None = None
    folder: Path | None = None
    # (fold, generator options, images per class) -> that fold's synthetic images
    _synthetic: dict[tuple[int, tuple[tuple[str, Any], ...], int], ImageDataset | None] = field(
        default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, rng) for name, rng in self.space.items()}
        config = with_params(self.plan.config, params)
        with self.trial_run(trial, config) as run:
            value = self.score(trial, config, run)
            run.scalars({"trial/objective": value}, 0)
        return value

    def score(self, trial: optuna.Trial, config: RunConfig, run: TrackedRun) -> float:
        progress = run.progress(NullProgress())
        if self.objective.kind == "im":
            return self.im_score(config, progress)
        scores: list[float] = []
        for step, fold in enumerate(self.folds):
            scores.append(self.fold_accuracy(config, step, fold,
                                             Labelled(progress, f" (fold {step + 1})")))
            run.scalars({"trial/fold_accuracy": scores[-1],
                         "trial/cv_accuracy": float(np.mean(scores))}, step + 1)
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {step + 1}")
        trial.set_user_attr("fold_accuracy", scores)
        return float(np.mean(scores))

    def trial_run(self, trial: optuna.Trial, config: RunConfig
                  ) -> AbstractContextManager[TrackedRun]:
        """The trial's tracker run (none without --tracker): the trial's config as
        hyper-parameters, its adapter losses, fold accuracies and objective; a pruned
        trial ends KILLED."""
        folder = self.folder or Path(config.out)
        return tracked(self.tracker, f"{run_name(folder, config.out)}/trial-{trial.number}",
                       folder / TENSORBOARD / f"trial-{trial.number}",
                       {**hyperparameters(config), "trial": trial.number},
                       {"imgxfer.folder": str(folder.resolve()), "imgxfer.task": "tune",
                        "imgxfer.study": trial.study.study_name,
                        "imgxfer.trial": str(trial.number)},
                       stopped=(optuna.TrialPruned,))

    def fold_accuracy(self, config: RunConfig, index: int, split: Split,
                      progress: Progress = NullProgress()) -> float:
        from imgxfer.tasks.classify.stages.adapt import fit_and_evaluate

        plan, data = self.fold_plan(config, index, split)
        with self.same_start():
            _, metrics, _ = fit_and_evaluate(plan, plan.adapters[config.adapter], data,
                                             progress, config.adapter)
        assert metrics.accuracy is not None  # classification_metrics always measures it
        return metrics.accuracy

    def im_score(self, config: RunConfig, progress: Progress = NullProgress()) -> float:
        from imgxfer.tasks.classify.stages.adapt import fit_adapter, unlabelled_im

        plan, data = self.fold_plan(config, 0, self.plan.split)
        with self.same_start():
            model, _ = fit_adapter(plan, plan.adapters[config.adapter], data, progress,
                                   config.adapter)
        return unlabelled_im(model, plan.encoder, plan.split.unlabelled, plan.device)

    @contextmanager
    def same_start(self) -> Iterator[None]:
        """Each fit starts from the RNG state a run's adapter would see after the encoder
        (no generator), so trials differ in their options, not in their luck."""
        devices = [self.plan.device] if self.plan.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng_state)
            yield

    def fold_plan(self, config: RunConfig, index: int, split: Split
                  ) -> tuple[Plan, TransferData]:
        """The plan of one fit: the trial's config, a fresh adapter (and generator), the
        fold's split, the shared pretrained encoder (fit_adapter fits a copy of it)."""
        adapter = self.registry.build("adapters", config.adapter, config.options["adapter"],
                                      seed=config.seed, augment=config.augment)
        plan = replace(self.plan, config=config, split=split, adapters={config.adapter: adapter})
        synthetic = self.synthetic(plan, index) if config.generator != NONE else None
        return plan, TransferData(plan.source, split.labelled, split.unlabelled, synthetic)

    def synthetic(self, plan: Plan, index: int) -> ImageDataset | None:
        """The fold's synthetic images, made by the generator stage from the fold's shots
        only (a generator that saw the held-out shots would leak them). They depend on
        the generator's options and the images per class, not on the adapter's, so they
        are made once per fold and such options and kept for later trials."""
        config = plan.config
        key = (index, tuple(sorted(config.options["generator"].items())),
               config.synthetic_per_class)
        if key not in self._synthetic:
            self._synthetic[key] = make_synthetic(plan, self.registry)
        return self._synthetic[key]


def make_synthetic(plan: Plan, registry: Registry) -> ImageDataset | None:
    from imgxfer.tasks.classify.stages.caption import caption_labelled
    from imgxfer.tasks.classify.stages.generate import generate

    config = plan.config
    generator = registry.build("generators", config.generator, config.options["generator"],
                               seed=config.seed, augment=config.augment)
    plan = replace(plan, generator=generator)
    # generate() saves the generator into a run folder; a trial keeps none.
    with tempfile.TemporaryDirectory(prefix="imgxfer-tune-") as folder:
        made = generate(plan, caption_labelled(plan), Path(folder), NullProgress(), False,
                        Timings())
    return made.synthetic


def suggest(trial: optuna.Trial, name: str, rng: Range) -> Any:
    """The trial's value for ``name``, through Optuna's own suggest API."""
    if rng.scale == "choice":
        return trial.suggest_categorical(name, list(rng.values))
    if rng.scale.startswith("int"):
        return trial.suggest_int(name, rng.values[0], rng.values[1], log=rng.log)
    return trial.suggest_float(name, rng.values[0], rng.values[1], log=rng.log)


def prepare_tuner(config: RunConfig, registry: Registry, space: dict[str, Range],
                  folds: int | None) -> Tuner:
    """Load the data with the run's seed, drop its test split and pretrain the encoder
    once. Every trial reuses that encoder (a copy per fit): its pretraining depends on
    the source, the encoder's options and the seed, none of which is tuned, and it is
    the encoder ``imgxfer run --config best.toml`` trains again with the same seed."""
    from imgxfer.tasks.classify.stages.encode import encode

    plan = prepare(tuning_config(config), registry)
    plan = replace(plan, split=without_test(plan.split))
    space = with_run_policy(space, plan.config.augment)  # --augment auto's choice
    objective = choose_objective(plan.split.labelled, plan.split.unlabelled, folds)
    encoder, _ = encode(plan, NullProgress())
    plan = replace(plan, encoder=encoder)
    rng_state = torch.get_rng_state()
    splits = (cv_folds(plan.split.labelled, plan.split.unlabelled, objective.folds,
                       config.seed)
              if objective.kind == "cv" else [])
    log.info("tune: %s", objective.why)
    return Tuner(plan, registry, space, objective, splits, rng_state)


@dataclass
class Study:
    """An opened study and how it was opened, for the summary and the continue hint."""

    study: optuna.Study
    storage: str
    name: str
    continued: int  # trials it held before this invocation


def check_storage(url: str) -> None:
    """Find what is wrong with a storage URL without writing to it (so bad input creates
    no empty study): it must parse, name an installed database driver and, for SQLite,
    a file in an existing folder. Whether a server answers is known when it is opened."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()  # imports the driver: unknown schemes and missing drivers fail
    except Exception as error:  # SQLAlchemy raises several types here
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--storage {shown_url(url)!r} cannot be opened: "
                        f"{reason.rstrip('.')}.") from None
    folder = Path(parsed.database or "").parent
    if parsed.get_backend_name() == "sqlite" and parsed.database and not folder.is_dir():
        raise UserError(f"--storage {shown_url(url)!r} cannot be opened: the folder "
                        f"{str(folder)!r} does not exist.")


# Optuna's heartbeat of a running trial, and how long a silent one counts as running
# still (a slow fold may hold the GIL a while; several beats missed means it is gone).
HEARTBEAT_S = 60
GRACE_S = 300


@contextmanager
def _no_experimental_warning() -> Iterator[None]:
    """Optuna marks its heartbeat experimental; a user of `imgxfer tune` need not read so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_study(url: str, name: str, config: RunConfig) -> Study:
    """Create the study, or load it when ``url`` already holds one by that name (several
    machines given one URL share it: Optuna's distributed mode). A URL that cannot be
    opened, or a study of another config, is one sentence."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        # A running trial beats every HEARTBEAT_S; a trial whose process was killed stops
        # beating, and once GRACE_S have passed it is failed (below, and by Optuna before
        # each new trial) instead of staying RUNNING in the study forever.
        with _no_experimental_warning():
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
        study = optuna.create_study(storage=storage, study_name=name, direction=DIRECTION,
                                    load_if_exists=True)
    except Exception as error:  # SQLAlchemy and Optuna raise many types for a bad URL
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--storage {shown_url(url)!r} cannot be opened: {reason.rstrip('.')}.") from None
    check_same_study(study, config, url)
    with _no_experimental_warning():
        optuna.storages.fail_stale_trials(study)  # a continued study: trials killed earlier
    return Study(study, url, name, len(study.trials))


# What must agree for two invocations to add trials to one study: the config (seed and
# data included), apart from where run folders and tracker runs go. The tracker's keys and
# the augmentation's reason are left out of the text, so that studies begun before they
# existed still match.
def study_key(config: RunConfig) -> str:
    """What a study records of its config, to refuse a continuation with another one:
    config.toml's text without the output folder and the tracker (where results go)."""
    return replace(config, out="").to_toml(exclude=("tracker", "tracker_uri", "augment_reason"))


def check_same_study(study: optuna.Study, config: RunConfig, url: str) -> None:
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", study_key(config))
    elif saved != study_key(config):
        raise UserError(f"study {study.study_name!r} in {shown_url(url)!r} was run with "
                        "another config (data, seed or components); give another "
                        "--study-name, or the same options as before.")


def sampler_and_pruner(config: RunConfig, n_trials: int, done: int) -> tuple[Any, Any]:
    """TPE, seeded by the run's seed and the trials the study already holds (a continued
    study must not draw the same first points again), with a constant liar so
    concurrent workers avoid each other's running trials; and the median pruner, which
    judges a trial from its second fold on against the trials before it."""
    startup = max(3, min(10, n_trials // 3))
    sampler = optuna.samplers.TPESampler(seed=(config.seed + done) % 2**32,
                                         n_startup_trials=startup, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=1)
    return sampler, pruner


def run_study(opened: Study, tuner: Tuner, *, n_trials: int, timeout: float | None,
              pruner: Any = None, callbacks: Sequence[TrialCallback] = ()) -> None:
    """Enqueue the config's own values as a trial (so the study compares against them and
    its best is never worse on the objective), then optimise."""
    study = opened.study
    study.sampler, default_pruner = sampler_and_pruner(tuner.plan.config, n_trials,
                                                       opened.continued)
    study.pruner = pruner or default_pruner
    start = current_values(tuner.plan.config, tuner.registry, list(tuner.space))
    start = {k: v for k, v in start.items() if tuner.space[k].contains(v)}
    study.enqueue_trial(start, user_attrs={"start": True}, skip_if_exists=True)
    study.set_user_attr("objective", tuner.objective.label)
    study.set_user_attr("objective_why", tuner.objective.why)
    study.optimize(tuner, n_trials=n_trials, timeout=timeout, callbacks=list(callbacks),
                   gc_after_trial=True)


def best_config(config: RunConfig, study: optuna.Study) -> RunConfig:
    """The user's config with the best trial's values: what best.toml holds."""
    return with_params(copy.deepcopy(config), study.best_trial.params)


@dataclass
class TuneResult:
    folder: Path
    study: Study
    objective: Objective
    best: RunConfig | None  # None when no trial finished
    files: list[Path]


def check_budget(n_trials: int, timeout: float | None) -> None:
    if n_trials < 1:
        raise UserError(f"--n-trials must be 1 or more, got {n_trials}.")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be a positive duration, got {timeout}.")


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / STUDY_DB).resolve()}"


def tune(config: RunConfig, registry: Registry, *, n_trials: int,
         timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, folds: int | None = None,
         params: list[str] | None = None, pruner: Any = None,
         callbacks: Sequence[TrialCallback] = ()) -> TuneResult:
    """Check everything, load the data and pretrain the encoder, then create the tune
    folder (``<out>/<time>-tune-<name>``), run the study and write its outputs. Every
    user mistake is raised before the folder exists; a given ``storage`` is checked
    before the data is loaded and opened after, the default one (sqlite in the folder)
    once the folder exists."""
    from imgxfer.core.runfolder import create_run_dir

    check_budget(n_trials, timeout)
    config.validate()
    space = search_space(config, registry, params)
    name = study_name or config.name
    if storage:
        check_storage(storage)
    tracker = open_tracker(config)  # its package and location, before anything is written
    tuner = prepare_tuner(config, registry, space, folds)
    # The study is keyed by the policy --augment auto resolved to (what the trials run).
    config = replace(config, augment=tuner.plan.config.augment)
    # Opened once the data is checked, so bad input leaves no empty study behind.
    opened = open_study(storage, name, config) if storage else None
    folder = create_run_dir(config.out, f"tune-{config.name}")
    tuner.tracker, tuner.folder = tracker, folder
    if opened is None:
        try:
            opened = open_study(default_storage(folder), name, config)
        except BaseException:  # leave no folder behind that holds nothing
            shutil.rmtree(folder, ignore_errors=True)
            raise
    stopped: BaseException | None = None
    try:
        run_study(opened, tuner, n_trials=n_trials, timeout=timeout, pruner=pruner,
                  callbacks=callbacks)
    except BaseException as error:  # Ctrl-C or a failed trial: keep what finished first
        stopped = error
    study = opened.study
    finished = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    best = best_config(config, study) if finished else None
    files = write_outputs(folder, best, study, opened.storage)
    if stopped is not None:
        raise stopped
    return TuneResult(folder, opened, tuner.objective, best, files)
