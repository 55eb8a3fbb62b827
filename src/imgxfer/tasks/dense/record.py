"""metrics.json of a dense run: what it measured, read back by the CLI, ``--seeds``
summaries and the benchmark scripts. A classification run's metrics.json has no
``task`` key (:mod:`imgxfer.run.metrics`); a dense one says ``"task": "segment"`` or
``"detect"``, so a reader knows which schema it holds (:func:`is_dense`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgxfer.core import runfolder


@dataclass
class DenseRunMetrics:
    version: str
    seed: int
    device: str
    task: str
    data: dict[str, Any]
    model: dict[str, Any]
    # Per adapter, in the order they ran: the task's metrics on the target test scenes
    # (imgxfer.tasks.dense.metrics) with steps and train_seconds.
    adapters: dict[str, dict[str, Any]]
    generator: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DenseRunMetrics:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def headline(self) -> dict[str, Any]:
        """The first adapter's metrics: the run's result."""
        return next(iter(self.adapters.values()))


def is_dense(data: dict[str, Any]) -> bool:
    return data.get("task") in ("segment", "detect")


def describe(plan: Any) -> dict[str, Any]:
    """metrics.json's ``data`` section."""
    config, split = plan.config, plan.split
    return {
        "source": {"name": config.source, "domain": plan.source.domain,
                   "scenes": len(plan.source)},
        "target": {"name": config.target, "domain": split.test.domain,
                   "labelled": len(split.labelled), "unlabelled": len(split.unlabelled),
                   "test": len(split.test)},
        "classes": list(split.test.class_names),
        "notes": plan.source.notes + split.test.notes,
    }


def write(folder: Path, metrics: DenseRunMetrics) -> None:
    """metrics.json, last: it marks a finished run."""
    runfolder.atomic_write_json(folder / runfolder.METRICS, metrics.to_json())


def read(folder: Path) -> DenseRunMetrics:
    return DenseRunMetrics.from_json(json.loads((folder / runfolder.METRICS).read_text()))
