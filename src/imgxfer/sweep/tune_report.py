"""What `imgxfer tune` leaves in its folder, each file written atomically: best.toml (a
run config ``imgxfer run --config`` reruns), trials.csv, summary.md and history.png."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna

from imgxfer.core.config import RunConfig
from imgxfer.core.runfolder import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BEST = "best.toml"
TRIALS = "trials.csv"
SUMMARY = "summary.md"
HISTORY = "history.png"
STUDY_DB = "study.db"  # the default storage: sqlite:///<tune folder>/study.db


def write_outputs(folder: Path, best: RunConfig | None, study: optuna.Study,
                  storage: str) -> list[Path]:
    """Every output file; best.toml only when a trial finished. Returns their paths."""
    written = []
    if best is not None:
        header = (f"# imgxfer tune: the best of study {study.study_name!r} "
                  f"({study.user_attrs.get('objective', 'objective')} "
                  f"{study.best_value:.4f}, trial {study.best_trial.number}).\n"
                  f"# Rerun it on the test split with: imgxfer run --config {folder / BEST}\n")
        atomic_write_text(folder / BEST, header + best.to_toml())
        written.append(folder / BEST)
    atomic_write_text(folder / TRIALS, trials_csv(study))
    atomic_write_text(folder / SUMMARY, summary(study, storage))
    written += [folder / TRIALS, folder / SUMMARY]
    png = history_png(study)
    if png is not None:
        atomic_write_bytes(folder / HISTORY, png)
        written.append(folder / HISTORY)
    return written


def shown_url(url: str) -> str:
    """A storage URL as it may be printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide that we know of
        return url


def _params(study: optuna.Study) -> list[str]:
    return list(dict.fromkeys(k for t in study.trials for k in t.params))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _seconds(trial: optuna.trial.FrozenTrial) -> str:
    return f"{trial.duration.total_seconds():.1f}" if trial.duration else ""


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ended (complete, pruned or failed): a trial still RUNNING or
    WAITING is no result yet (another worker's, or one killed within the heartbeat's
    grace period), so the outputs leave it out."""
    return [t for t in study.trials if t.state.is_finished()]


def trials_csv(study: optuna.Study) -> str:
    """One row per finished trial: number, state, value, the running mean after each fold
    (the intermediate values the pruner saw), seconds and every parameter."""
    names = _params(study)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "intermediate", "seconds", *names])
    for t in finished(study):
        steps = ";".join(f"{v:.4f}" for _, v in sorted(t.intermediate_values.items()))
        writer.writerow([t.number, t.state.name, _cell(t.value), steps, _seconds(t),
                         *(_cell(t.params.get(n)) for n in names)])
    return buffer.getvalue()


def summary(study: optuna.Study, storage: str) -> str:
    """A markdown summary: objective and why, best value and parameters against the
    starting config's, and a table of every trial with its state."""
    attrs = study.user_attrs
    ended = finished(study)
    states = {s.name: sum(t.state == s for t in ended) for s in optuna.trial.TrialState}
    unfinished = len(study.trials) - len(ended)
    lines = [f"# imgxfer tune: study {study.study_name!r}", "",
             f"- objective: {attrs.get('objective', '?')} (maximised); "
             f"{attrs.get('objective_why', '')}",
             "- the target test split was not used; rerun best.toml to measure on it",
             f"- storage: `{shown_url(storage)}`",
             "- trials: " + (", ".join(f"{n} {s.lower()}" for s, n in states.items() if n)
                             or "none finished")]
    if unfinished:
        lines.append(f"- {unfinished} unfinished trial(s) left out (running elsewhere, or "
                     "stopped; a stopped one is failed once its heartbeat is overdue)")
    lines.append("")
    lines += _best_lines(study)
    names = _params(study)
    lines += ["## Trials", "", "| # | state | value | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for t in ended:
        mark = " (start)" if t.user_attrs.get("start") else ""
        lines.append(f"| {t.number}{mark} | {t.state.name.lower()} | {_cell(t.value)} | "
                     + " | ".join(_cell(t.params.get(n)) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _best_lines(study: optuna.Study) -> list[str]:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return ["No trial finished, so there is no best configuration.", ""]
    best = study.best_trial
    start = next((t for t in complete if t.user_attrs.get("start")), None)
    lines = [f"## Best: trial {best.number}, value {best.value:.4f}"
             + (f" (starting config: {start.value:.4f})" if start else ""), "",
             "| parameter | best | starting config |", "|---|---|---|"]
    for name, value in best.params.items():
        before = start.params.get(name) if start else None
        lines.append(f"| {name} | {_cell(value)} | {_cell(before)} |")
    return lines + [""]


def history_png(study: optuna.Study) -> bytes | None:
    """Optuna's optimisation history plot (every trial's value and the best so far), or
    None before any trial finished."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = optuna.visualization.matplotlib.plot_optimization_history(
            study, target_name=study.user_attrs.get("objective", "objective"))
    figure = cast("Figure", axes.get_figure())  # the plot's own figure, not a subfigure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
