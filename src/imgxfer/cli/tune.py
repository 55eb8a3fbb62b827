"""`imgxfer tune`: search the run's tunable options with Optuna (imgxfer.sweep.tune), scored
without the target test split, and write the best as a config `imgxfer run` reruns."""

from __future__ import annotations

from typing import Any

import click

from imgxfer.cli.context import current_registry
from imgxfer.cli.run_options import run_options
from imgxfer.core.config import STAGES, RunConfig
from imgxfer.core.errors import UserError

DEFAULT_TRIALS = 20


@click.command("tune", short_help="Search adapter and generator options with Optuna.")
@run_options(config="TOML run config to start from; flags given here override it.",
             name="Run name (the tune folder's and the study's name).",
             adapter=f"Transfer method whose options are searched (default {RunConfig.adapter}).",
             out="Folder that receives the tune folder (default runs).")
@click.option("--n-trials", type=int, default=DEFAULT_TRIALS, show_default=True,
              help="Trials this invocation runs (each worker of a shared study runs its own).")
@click.option("--timeout", metavar="DURATION",
              help="Start no new trial after this long, e.g. 20m.")
@click.option("--param", "params", multiple=True, metavar="NAME",
              help="Search only this option, e.g. adapter.lr or adapter_steps (repeatable; "
                   "default: every tunable option of the run).")
@click.option("--folds", type=int,
              help="Cross-validation folds over the labelled shots (default: shots, at most 5).")
@click.option("--storage", metavar="URL",
              help="Optuna storage URL, e.g. sqlite:///study.db or postgresql://...; "
                   "default: sqlite:///<tune folder>/study.db.")
@click.option("--study-name", help="Study to create or continue (default: the run name).")
def tune_command(config_file: str | None, n_trials: int, timeout: str | None,
                 params: tuple[str, ...], folds: int | None, storage: str | None,
                 study_name: str | None, **flags: Any) -> None:
    """Search the tunable options of the adapter (and generator) with Optuna.

    Each trial is scored without the target test split: by k-fold cross-validation over
    the labelled shots when every class has 2 or more, otherwise by the IM score on the
    unlabelled target images. Poor trials are pruned after a fold (median pruner). The
    tune folder under --out holds best.toml (rerun it with `imgxfer run --config`),
    trials.csv, summary.md, history.png and, by default, the study (study.db). Several
    machines given one --storage URL and --study-name work on one study. With --tracker,
    each trial is one TensorBoard or MLflow run (its config, losses and score).

    \b
    Examples:
      imgxfer tune --shots 5 --generator none --n-trials 15 --timeout 10m
      imgxfer tune --shots 1 --generator none --adapter self-training --param adapter.lr
      imgxfer tune --storage sqlite:///shared.db --study-name digits5 --n-trials 10
      imgxfer run --config runs/<tune folder>/best.toml
    """
    from imgxfer.core.budget import parse_duration
    from imgxfer.sweep.tune import check_budget, tune

    seconds = parse_duration(timeout) if timeout is not None else None
    check_budget(n_trials, seconds)
    config = _config(config_file, flags)
    result = tune(config, current_registry(), n_trials=n_trials, timeout=seconds,
                  storage=storage, study_name=study_name, folds=folds, params=list(params),
                  callbacks=[_print_trial])
    _print_result(result)


def _config(config_file: str | None, flags: dict[str, Any]) -> Any:
    """The run config from --config and the flags, as `imgxfer run` builds it."""
    from imgxfer.core import config as cfg

    options = {s: list(flags.pop(f"{s}_opt")) for s in STAGES}
    config = cfg.load(config_file) if config_file else cfg.RunConfig()
    config = cfg.apply_overrides(config, flags, options)
    if config.name == cfg.RunConfig.name and not flags.get("name"):
        config.name = f"{config.source}-to-{config.target}"
    if config.compare:
        raise UserError("imgxfer tune searches one adapter's options; the config's compare "
                        "list has several; give --adapter instead.")
    if config.task != "classify":
        raise UserError(f"imgxfer tune searches classification runs; --task {config.task} "
                        "runs are compared with `imgxfer run --compare` and "
                        "benchmarks/dense.py instead.")
    return config


def _say(text: str) -> None:
    click.echo(text, err=True)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_trial(study: Any, trial: Any) -> None:
    shown = ", ".join(f"{k}={_shown(v)}" for k, v in trial.params.items())
    value = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:  # no finished trial yet
        best = "no finished trial yet"
    _say(f"trial {trial.number}: {value}; {best}  {shown}")


def _print_result(result: Any) -> None:
    from imgxfer.sweep.tune_report import BEST, shown_url

    study = result.study.study
    _say(f"objective: {result.objective.label} ({result.objective.why}).")
    if result.best is not None:
        _say(f"best: trial {study.best_trial.number}, {result.objective.label} "
             f"{study.best_value:.4f}")
        width = max(map(len, study.best_trial.params), default=0)
        for name, value in study.best_trial.params.items():
            _say(f"  {name:<{width}}  {_shown(value)}")
    _say(f"tune folder: {result.folder} (summary.md, trials.csv, history.png)")
    if result.best is not None:
        _say(f"run it on the test split: imgxfer run --config {result.folder / BEST}")
    _say(f"continue this study: add --storage '{shown_url(result.study.storage)}' "
         f"--study-name '{result.study.name}' to the same command")
    if result.best is None:
        raise UserError("no trial finished (all were pruned or failed, or the time ran "
                        "out first), so there is no best.toml; give more --n-trials or a "
                        "longer --timeout.")
