"""How every run is carried out, whatever its task: :func:`execute` takes a task's
:class:`Plan` (made by that task's ``prepare``, :data:`imgxfer.tasks.TASKS`), writes
config.toml and run.log, lets the plan run its stages into the folder, and on any error
leaves ``failed.json`` for ``imgxfer run --resume`` (docs/architecture.md, "The path of
a run"). ``--seeds`` is :mod:`imgxfer.sweep.seeds`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from imgxfer import __version__
from imgxfer.core import distributed, runfolder
from imgxfer.core.config import RunConfig, load_saved, same_run
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.core.runfolder import atomic_write_json, atomic_write_text, create_run_dir
from imgxfer.run import tracking

log = logging.getLogger("imgxfer")


class Plan(Protocol):
    """What a task's ``prepare(config, registry)`` returns: everything its run needs,
    built and checked before a folder exists. The stages take it and never change it."""

    config: RunConfig
    device: torch.device

    def run(self, folder: Path, progress: Progress, resume: bool) -> RunResult:
        """Run the task's stages into ``folder`` (which holds config.toml already)."""
        ...


@dataclass
class RunResult:
    folder: Path
    metrics: Any  # RunMetrics; a dense run's imgxfer.tasks.dense.record.DenseRunMetrics
    config: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)  # what the report draws


def resume_config(folder: Path) -> RunConfig:
    """The config of an interrupted run folder, for :func:`execute` with ``resume=True``.
    A folder that is not a run folder, or whose run has finished, is refused."""
    if not folder.is_dir():
        raise UserError(f"--resume: {str(folder)!r} is not a folder.")
    if not (folder / runfolder.CONFIG).is_file():
        raise UserError(f"--resume: {str(folder)!r} is not a run folder (it has no "
                        f"{runfolder.CONFIG}).")
    if (folder / runfolder.METRICS).is_file():
        raise UserError(f"--resume: the run in {str(folder)!r} has already finished; "
                        "start a new run instead.")
    return load_saved(folder / runfolder.CONFIG)


def execute(plan: Plan, *, progress: Progress = NullProgress(),
            folder: Path | None = None, resume: bool = False,
            tracker: tracking.Tracker | None | tracking.Unopened = tracking.UNOPENED
            ) -> RunResult:
    """Run the stages of ``plan`` into ``folder``
    (a new folder under ``config.out`` when None). With ``resume``, ``folder`` is an
    interrupted run of the same config: the run starts again from the beginning with
    the same seed (so the same split and encoder), and the generator continues from its
    training checkpoint instead of step 0. ``tracker`` is the config's tracker when the
    caller opened it already (``--seeds``: one for every seed's run)."""
    config = plan.config
    if resume and distributed.world_size() > 1:
        raise UserError("--resume continues a run in one process; start it without a "
                        "launcher (accelerate launch, torchrun).")
    if isinstance(tracker, tracking.Unopened):  # its package and location, before a folder
        tracker = tracking.open_tracker(config)
    if folder is None or not distributed.is_main():  # only the main process writes --out
        folder = create_run_dir(config.out, config.name)
    elif not resume:
        folder.mkdir(parents=True)
    elif not same_run(resume_config(folder), config):
        raise UserError(f"--resume: {str(folder)!r} holds a run of another config; it is "
                        "left as it is.")
    atomic_write_text(folder / runfolder.CONFIG, config.to_toml())
    with _log_to(folder / runfolder.LOG):
        log.info("imgxfer %s, run folder %s, device %s%s", __version__, folder, plan.device,
                 " (resumed)" if resume else "")
        (folder / runfolder.FAILED).unlink(missing_ok=True)  # a resumed run is no longer failed
        try:
            return _run_tracked(plan, folder, progress, resume, tracker)
        except UserError as error:  # one sentence, with the way back
            mark_failed(folder, error)
            raise UserError(f"{str(error).rstrip('.')}; the run stopped and its folder is "
                            f"kept: continue it with imgxfer run --resume {folder}") from None
        except BaseException as error:
            mark_failed(folder, error)
            raise


def _run_tracked(plan: Plan, folder: Path, progress: Progress, resume: bool,
                 tracker: tracking.Tracker | None) -> RunResult:
    """``plan.run`` inside one tracker run (--tracker), which logs every loop's numbers,
    the config and, once the run has finished, metrics.json and its artifacts. A resumed
    run is a new tracker run: the first stopped part way."""
    config = plan.config
    name = tracking.run_name(folder, config.out) + (" (resumed)" if resume else "")
    tags = {"imgxfer.folder": str(folder.resolve()), "imgxfer.task": config.task,
            "imgxfer.version": __version__}
    with tracking.tracked(tracker, name, folder / runfolder.TENSORBOARD,
                          tracking.hyperparameters(config), tags) as track:
        result = plan.run(folder, track.progress(progress), resume)
        track.finish(folder)
    return result


def mark_failed(folder: Path, error: BaseException) -> None:
    """Record in ``folder`` that its run stopped on ``error``: ``failed.json`` and, with
    the traceback, run.log. An interrupted run (Ctrl-C) is recorded as such, and either
    can be continued with ``imgxfer run --resume``."""
    interrupted = isinstance(error, KeyboardInterrupt)
    if interrupted:
        log.error("run interrupted")
    elif isinstance(error, UserError):  # the CLI shows it once, as the error
        log.error("run stopped: %s", error, extra={"screen": False})
    else:
        log.error("run failed", exc_info=error)
    atomic_write_json(folder / runfolder.FAILED, {
        "status": "interrupted" if interrupted else "failed",
        "error": type(error).__name__, "message": str(error),
        "resume": f"imgxfer run --resume {folder}"})


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
