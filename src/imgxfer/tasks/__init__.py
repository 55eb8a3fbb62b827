"""The tasks a run can do, one package each, and the table that names them.

Every task has a ``prepare(config, registry) -> Plan`` (checks everything and builds
every component before a folder exists; :class:`imgxfer.run.execute.Plan`), and its plan
runs its own stages. Execute, resume, ``--seeds``, ``imgxfer tune`` and the CLI take one
path for every task: :func:`prepare`, then :func:`imgxfer.run.execute.execute`. Adding a
task is a package here and a row in :data:`TASKS` (docs/architecture.md, "Adding a
task")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgxfer.core.config import RunConfig
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.plugin.registry import Registry
from imgxfer.run.execute import Plan, RunResult, execute
from imgxfer.tasks.classify.plan import prepare as prepare_classify
from imgxfer.tasks.dense.run import prepare as prepare_dense

# --task NAME -> the task's prepare. The registry's TASKS lists the same names.
TASKS: dict[str, Callable[[RunConfig, Registry], Plan]] = {
    "classify": prepare_classify,
    "segment": prepare_dense,
    "detect": prepare_dense,
}


def prepare(config: RunConfig, registry: Registry) -> Plan:
    """The plan of ``config``'s task."""
    return TASKS[config.task](config, registry)


def run(config: RunConfig, registry: Registry, *, progress: Progress = NullProgress(),
        folder: Path | None = None) -> RunResult:
    """Run ``config`` (with its task's defaults, :meth:`RunConfig.for_task`) into
    ``folder``, or a new folder under ``config.out``: the library call behind
    ``imgxfer run``."""
    return execute(prepare(config.for_task(), registry), progress=progress, folder=folder)
