"""Experiment tracking (``--tracker tensorboard|mlflow``, docs/user-guide/tracking.md): a
run's losses by step, its final metrics (metrics.json's numbers), its config as
hyper-parameters and, for MLflow, its report, samples and metrics.json as artifacts.

Every long loop already reports its latest numbers to the run's
:class:`~imgxfer.core.progress.Progress` (``task.advance(1, loss=...)``), so
:class:`TrackedProgress` wraps that progress and logs each task's numbers as scalars
``<task>/<name>`` against the task's own step count: the encoder's pre-training, the
generator or translator, every adapter and the dense models, with no loop touched.
:func:`tracked` opens one tracker run around a run (or a tuning trial) and ends it with
the run's status. The backends (:mod:`imgxfer.run.trackers`) are imported only when a
tracker is asked for, and only the main process of a distributed run logs."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imgxfer.core import processes, runfolder
from imgxfer.core.config import NONE, RunConfig
from imgxfer.core.errors import one_line
from imgxfer.core.progress import Progress, Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("imgxfer")

Scalar = str | int | float | bool
# What MLflow logs as artifacts of a finished run, when the run wrote them.
ARTIFACTS = (runfolder.METRICS, runfolder.CONFIG, runfolder.REPORT, runfolder.SAMPLES,
             runfolder.EXPLANATIONS, runfolder.PREDICTIONS)
# Tracker statuses (MLflow's names; TensorBoard keeps none).
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class Sink(Protocol):
    """One tracker run: what a backend writes."""

    def params(self, values: Mapping[str, Scalar]) -> None: ...

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def artifacts(self, paths: Sequence[Path]) -> None: ...

    def close(self, status: str) -> None: ...


class Tracker(Protocol):
    """A tracker opened (package imported, location checked) before anything is written;
    :meth:`start` begins one of its runs."""

    kind: str

    def start(self, name: str, default_dir: Path, tags: Mapping[str, str]) -> Sink:
        """A new run called ``name``; ``default_dir`` is where TensorBoard writes it unless
        --tracker-uri gives a folder (RUN/tensorboard, or a trial's folder in the tune
        folder's tensorboard/)."""
        ...


class Unopened:
    """A tracker not opened yet: :func:`~imgxfer.run.execute.execute` opens the config's
    own (None, the other choice, means no tracker)."""


UNOPENED = Unopened()


def open_tracker(config: RunConfig) -> Tracker | None:
    """The tracker ``config`` asks for, opened, or None (``tracker = "none"``, or a process
    of a distributed run other than the main one, which logs for all). A missing package
    or a location that cannot be opened is one sentence (UserError)."""
    if config.tracker == NONE or not processes.is_main():
        return None
    from imgxfer.run.trackers import open_backend

    return open_backend(config.tracker, config.tracker_uri, config)


@functools.lru_cache(maxsize=512)  # called for every number of every training step
def tag(text: str) -> str:
    """A metric or folder name that TensorBoard and MLflow both take: 'adapter: finetune
    (with synthetic)' -> 'adapter/finetune_with_synthetic' (a colon separates levels;
    other characters outside letters, digits, '_.-/' become '_')."""
    parts = []
    for part in re.split(r"\s*[:/]\s*", text.strip()):
        part = re.sub(r"[^\w.\-]+", "_", part).strip("_")
        if part and part not in (".", ".."):
            parts.append(part)
    return "/".join(parts) or "value"


def hyperparameters(config: RunConfig) -> dict[str, Scalar]:
    """The config as config.toml records it, flattened: top-level keys as they are, a
    component's options as ``<stage>.<option>`` (the names `imgxfer tune --param` uses);
    lists and tables as text. Provenance (what was installed) is left to config.toml,
    and a password in the tracking URI to the user."""
    from imgxfer.run.trackers import shown_uri

    flat: dict[str, Scalar] = {}
    for key, value in tomllib.loads(config.to_toml()).items():
        if key == "provenance":
            continue
        if key == "tracker_uri":
            value = shown_uri(value)
        if isinstance(value, dict):
            flat[key] = str(value.pop("name", ""))
            flat.update({f"{key}.{k}": _scalar(v) for k, v in value.items()})
        else:
            flat[key] = _scalar(value)
    return flat


def _scalar(value: Any) -> Scalar:
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def final_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of metrics.json under its path ('target/accuracy',
    'adapters/finetune/macro_f1'); lists (per-class rows, intervals, the confusion
    matrix) stay in metrics.json."""
    found: dict[str, float] = {}
    for key, value in metrics.items():
        name = tag(f"{prefix}/{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            found.update(final_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


class _Guarded:
    """A sink whose failures (a tracking server gone, a disk full) cost the tracking, not
    the run: the first one is logged as a warning and the sink is dropped."""

    def __init__(self, sink: Sink, kind: str) -> None:
        self.sink: Sink | None = sink
        self.kind = kind

    def call(self, method: str, *args: Any) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as error:  # backends raise many types; the run goes on
            log.warning("--tracker %s stopped logging this run: %s", self.kind,
                        one_line(error))
            self.sink = None


class TrackedRun:
    """One tracker run as the stages see it. A run without a tracker has ``sink`` None
    and every method does nothing, so callers need not ask."""

    def __init__(self, sink: Sink | None = None, kind: str = NONE) -> None:
        self._sink = _Guarded(sink, kind) if sink is not None else None

    def progress(self, inner: Progress) -> Progress:
        """``inner`` as it is, or wrapped so that every task's numbers are logged."""
        return TrackedProgress(inner, self) if self._sink is not None else inner

    def params(self, values: Mapping[str, Scalar]) -> None:
        if self._sink is not None:
            self._sink.call("params", values)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._sink is not None and values:
            self._sink.call("scalars", values, step)

    def finish(self, folder: Path) -> None:
        """Log a finished run folder: metrics.json's numbers (at step 0) and the artifacts."""
        if self._sink is None:
            return
        path = folder / runfolder.METRICS
        if path.is_file():
            self.scalars(final_metrics(json.loads(path.read_text(encoding="utf-8"))), 0)
        self._sink.call("artifacts", [folder / n for n in ARTIFACTS if (folder / n).is_file()])

    def close(self, status: str) -> None:
        if self._sink is not None:
            self._sink.call("close", status)
            self._sink = None


class TrackedProgress:
    """A :class:`Progress` that forwards everything to ``inner`` and logs each task's
    numeric ``info`` as scalars ``<tag(description)>/<name>`` at the task's step count
    (its advances added up). A description seen before in this run gets '_2', '_3'..."""

    def __init__(self, inner: Progress, run: TrackedRun) -> None:
        self.inner, self.run = inner, run
        self._seen: dict[str, int] = {}

    def _unique(self, description: str) -> str:
        name = tag(description)
        self._seen[name] = self._seen.get(name, 0) + 1
        return name if self._seen[name] == 1 else f"{name}_{self._seen[name]}"

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        with self.inner.task(description, total) as inner:
            yield _TrackedTask(inner, self.run, self._unique(description))

    def log(self, message: str) -> None:
        self.inner.log(message)


@dataclass
class _TrackedTask:
    inner: Task
    run: TrackedRun
    name: str
    step: int = 0

    def advance(self, n: int = 1, **info: float | str) -> None:
        self.inner.advance(n, **info)
        self.step += n
        numbers = {f"{self.name}/{tag(key)}": float(value) for key, value in info.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        self.run.scalars(numbers, self.step)


@contextmanager
def tracked(tracker: Tracker | None, name: str, default_dir: Path, params: Mapping[str, Scalar],
            tags: Mapping[str, str] | None = None,
            stopped: tuple[type[BaseException], ...] = ()) -> Iterator[TrackedRun]:
    """One tracker run around the block: started with ``params``, closed FINISHED, or
    KILLED (Ctrl-C, or one of the ``stopped`` exceptions, e.g. a pruned trial), or FAILED
    on any other error, which goes on up. Without a tracker, a run that logs nothing."""
    if tracker is None:
        yield TrackedRun()
        return
    try:
        run = TrackedRun(tracker.start(name, default_dir, tags or {}), tracker.kind)
    except Exception as error:  # opened a moment ago; a run is worth more than its log
        log.warning("--tracker %s could not start a run, so this one is not logged: %s",
                    tracker.kind, one_line(error))
        run = TrackedRun()
    run.params(params)
    try:
        yield run
    except BaseException as error:
        run.close(KILLED if isinstance(error, (KeyboardInterrupt, *stopped)) else FAILED)
        raise
    run.close(FINISHED)


def run_name(folder: Path, out: str | Path) -> str:
    """A run's name in the tracker: its folder under ``out`` ('<time>-<name>', or
    '<time>-<name>/seed-0' for one seed of --seeds), else the folder's own name."""
    try:
        return folder.resolve().relative_to(Path(out).resolve()).as_posix()
    except ValueError:
        return folder.name
