"""The whole chain of docs/architecture.md as one library call: plan (check and build
everything), then the stages of :mod:`imgxfer.stages` into a run folder. The CLI's
``imgxfer run`` is a thin wrapper around :func:`run`; ``--seeds`` is :mod:`imgxfer.seeds`."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from imgxfer import __version__, distributed, runfolder
from imgxfer.config import RunConfig, from_mapping, read_toml, same_run
from imgxfer.errors import UserError
from imgxfer.metrics import RunMetrics, Timings
from imgxfer.plan import Plan, prepare
from imgxfer.progress import NullProgress, Progress
from imgxfer.registry import Registry
from imgxfer.runfolder import atomic_write_json, atomic_write_text, create_run_dir
from imgxfer.stages.adapt import adapt, reads_synthetic
from imgxfer.stages.caption import caption_labelled, caption_unlabelled
from imgxfer.stages.data import describe
from imgxfer.stages.encode import encode
from imgxfer.stages.generate import Generated, generate

log = logging.getLogger("imgxfer")


@dataclass
class RunResult:
    folder: Path
    metrics: Any  # RunMetrics; a dense run's imgxfer.dense.record.DenseRunMetrics
    config: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)  # what the report draws


def run(config: RunConfig, registry: Registry, *, progress: Progress = NullProgress(),
        folder: Path | None = None) -> RunResult:
    """Run the chain and write the run folder (``folder``, or a new one under
    ``config.out``); a dense task (``--task segment|detect``) runs :mod:`imgxfer.dense.run`
    with the task's defaults (:meth:`RunConfig.for_task`)."""
    return execute(plan_for(config.for_task(), registry), progress=progress, folder=folder)


def plan_for(config: RunConfig, registry: Registry) -> Any:
    """The plan of ``config``'s task: :class:`Plan`, or a dense run's ``DensePlan``."""
    if config.task == "classify":
        return prepare(config, registry)
    from imgxfer.dense import run as dense

    return dense.prepare(config, registry)


def run_stages(plan: Plan, folder: Path, progress: Progress, resume: bool = False) -> RunResult:
    config, source, split = plan.config, plan.source, plan.split
    log.info("source %s: %d images; target %s: %d labelled, %d unlabelled, %d test",
             source.domain, len(source), split.test.domain, len(split.labelled),
             len(split.unlabelled), len(split.test))
    timings = Timings()
    with timings.measure("encoder"):
        encoder_metrics = encode(plan, progress)
    with timings.measure("captioner"):
        captions = caption_labelled(plan)
    generated = None
    if plan.generator is not None and not reads_synthetic(plan.adapters.values()):
        progress.log(f"generator {config.generator} skipped: no adapter of this run reads "
                     f"synthetic images ({', '.join(plan.adapters)}).")
    elif plan.generator is not None:
        if config.synthesis_reason:  # what --synthesis auto chose, on screen as in the report
            progress.log(f"--synthesis {config.synthesis} ({config.synthesis_reason})")
        generated = generate(plan, captions, folder, progress, resume, timings)
        if generated.synthetic is not None:
            captions["synthetic"] = generated.prompts
    synthetic = generated.synthetic if generated else None
    adapted = adapt(plan, synthetic, folder, progress, timings)
    metrics = RunMetrics(__version__, config.seed, str(plan.device),
                         describe(config, source, split), encoder_metrics, adapted.target,
                         adapted.adapters, generated.metrics if generated else None,
                         adapted.deltas, adapted.baselines, timings.rounded(),
                         adapted.explanations)
    if distributed.describe():  # processes, precision: how the numbers were made
        metrics.extra["distributed"] = distributed.describe()
    captions["unlabelled"] = caption_unlabelled(plan, adapted.classifier)
    extras = {"source": source, "split": split, "synthetic": synthetic, "captions": captions,
              "adapter_history": adapted.history, **_generator_extras(generated)}
    finish(folder, config, metrics, extras)
    return RunResult(folder, metrics, config, extras)


def _generator_extras(generated: Generated | None) -> dict[str, Any]:
    if generated is None:
        return {}
    return {"synthesis_inputs": generated.inputs, "generator_history": generated.history}


def finish(folder: Path, config: RunConfig, metrics: RunMetrics, extras: dict[str, Any]) -> None:
    """captions.jsonl, the report, and metrics.json last: its presence marks a finished
    run. The generator's training checkpoint is then no longer needed."""
    from imgxfer import report

    report.write_captions(folder / runfolder.CAPTIONS, extras["captions"], extras["source"],
                          extras["split"], extras["synthetic"])
    report.write_report(folder, config, metrics, extras)
    atomic_write_json(folder / runfolder.METRICS, metrics.to_json())
    (folder / runfolder.TRAINING_CHECKPOINT).unlink(missing_ok=True)
    log.info("report written to %s", folder / runfolder.REPORT)


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
    saved = read_toml(folder / runfolder.CONFIG)
    config = from_mapping(saved, where=str(folder / runfolder.CONFIG))
    if "synthesis" not in saved:
        config.synthesis = "text"  # written before --synthesis existed: prompts, then
    return config


def execute(plan: Any, *, progress: Progress = NullProgress(),
            folder: Path | None = None, resume: bool = False) -> RunResult:
    """Run the stages of ``plan`` (a :class:`Plan` or a dense run's plan) into ``folder``
    (a new folder under ``config.out`` when None). With ``resume``, ``folder`` is an
    interrupted run of the same config: the run starts again from the beginning with
    the same seed (so the same split and encoder), and the generator continues from its
    training checkpoint instead of step 0."""
    config = plan.config
    if resume and distributed.world_size() > 1:
        raise UserError("--resume continues a run in one process; start it without a "
                        "launcher (accelerate launch, torchrun).")
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
            if isinstance(plan, Plan):
                return run_stages(plan, folder, progress, resume)
            from imgxfer.dense import run as dense

            return RunResult(folder, dense.run_stages(plan, folder, progress, resume), config)
        except UserError as error:  # one sentence, with the way back
            mark_failed(folder, error)
            raise UserError(f"{str(error).rstrip('.')}; the run stopped and its folder is "
                            f"kept: continue it with imgxfer run --resume {folder}") from None
        except BaseException as error:
            mark_failed(folder, error)
            raise


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
