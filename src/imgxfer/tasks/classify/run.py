"""The classification run: the stages of docs/architecture.md ("The chain") in order,
then captions.jsonl, the report and metrics.json. :meth:`Plan.run` calls it through
:func:`imgxfer.run.execute.execute`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgxfer import __version__
from imgxfer.core import distributed, runfolder
from imgxfer.core.config import RunConfig, augment_notice
from imgxfer.core.progress import Progress
from imgxfer.core.runfolder import atomic_write_json
from imgxfer.run.execute import RunResult
from imgxfer.run.metrics import RunMetrics, Timings
from imgxfer.tasks.classify import report
from imgxfer.tasks.classify.stages.adapt import adapt, reads_synthetic
from imgxfer.tasks.classify.stages.caption import caption_labelled, caption_unlabelled
from imgxfer.tasks.classify.stages.data import describe
from imgxfer.tasks.classify.stages.encode import encode
from imgxfer.tasks.classify.stages.generate import Generated, generate

if TYPE_CHECKING:  # the plan's run method imports this module
    from imgxfer.tasks.classify.plan import Plan

log = logging.getLogger("imgxfer")


def run_stages(plan: Plan, folder: Path, progress: Progress, resume: bool = False) -> RunResult:
    """Encode, caption, generate, adapt, then the report and metrics.json; each stage
    gets the plan it needs (the encoder stage's trained encoder goes into the next)."""
    config, source, split = plan.config, plan.source, plan.split
    log.info("source %s: %d images; target %s: %d labelled, %d unlabelled, %d test",
             source.domain, len(source), split.test.domain, len(split.labelled),
             len(split.unlabelled), len(split.test))
    if notice := augment_notice(config):  # what --augment auto chose
        progress.log(notice)
    timings = Timings()
    with timings.measure("encoder"):
        encoder, encoder_metrics = encode(plan, progress)
    plan = replace(plan, encoder=encoder)
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
    report.write_captions(folder / runfolder.CAPTIONS, extras["captions"], extras["source"],
                          extras["split"], extras["synthetic"])
    report.write_report(folder, config, metrics, extras)
    atomic_write_json(folder / runfolder.METRICS, metrics.to_json())
    (folder / runfolder.TRAINING_CHECKPOINT).unlink(missing_ok=True)
    log.info("report written to %s", folder / runfolder.REPORT)


