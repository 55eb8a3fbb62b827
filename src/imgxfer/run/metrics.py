"""The one metrics schema: what a run measures, as dataclasses. Stages fill them,
``metrics.json`` is ``RunMetrics.to_json()``, and the CLI tables, the report, the
``--seeds`` summary and the benchmark scripts read them through ``RunMetrics.from_json``
(which also reads the metrics.json of earlier versions: fields they lack are ``None``,
keys this version does not know are kept in ``extra`` and written back unchanged).
docs/architecture.md ("The chain") says which stage fills which part."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class _Record:
    """to_json/from_json for a flat dataclass: fields in order (``None`` ones left out
    where ``OMIT_NONE``), then ``extra``; JSON names differ only where Python's do
    (``with`` is ``with_``)."""

    OMIT_NONE: ClassVar[bool] = False
    RENAMED: ClassVar[dict[str, str]] = {}  # python name -> JSON key

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and self.OMIT_NONE:
                continue
            out[self.RENAMED.get(f.name, f.name)] = value
        out.update(getattr(self, "extra", {}))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        keys = {cls.RENAMED.get(f.name, f.name): f.name for f in fields(cls)  # type: ignore[arg-type]
                if f.name != "extra"}
        known = {keys[k]: v for k, v in data.items() if k in keys}
        record = cls(**known)
        if hasattr(record, "extra"):
            record.extra = {k: v for k, v in data.items() if k not in keys}
        return record


@dataclass
class AdapterMetrics(_Record):
    """One adapter's classifier on the target test split."""

    steps: int | None = None  # None: it does not train by steps (a probe solved to convergence)
    accuracy: float | None = None
    macro_f1: float | None = None
    unlabelled_im: float | None = None  # IM score on unlabelled target images (no labels)
    train_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetMetrics(_Record):
    """The run's classifier (its first adapter) in full: :func:`imgxfer.tasks.classify.evaluation.
    classification_metrics` plus the IM score."""

    accuracy: float | None = None
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    chance: float | None = None
    n_test: int | None = None
    per_class: list[dict[str, Any]] | None = None
    confusion_matrix: list[list[int]] | None = None
    unlabelled_im: float | None = None
    # The accuracy's 95% Wilson interval [low, high] (imgxfer.run.uncertainty); None in files
    # written before it was measured (imgxfer.run.uncertainty.accuracy_interval computes it).
    accuracy_interval: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SyntheticDelta(_Record):
    """One adapter with and without the synthetic images (``--compare-synthetic``)."""

    RENAMED: ClassVar[dict[str, str]] = {"with_": "with"}

    with_: float | None = None
    without: float | None = None
    delta: float | None = None
    macro_f1_with: float | None = None
    macro_f1_without: float | None = None
    macro_f1_delta: float | None = None
    synthetic_images: int | None = None
    same_fit: bool | None = None  # the adapter does not read synthetic images
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def between(cls, with_: AdapterMetrics | TargetMetrics, without: AdapterMetrics | TargetMetrics,
                n_synthetic: int, same_fit: bool) -> SyntheticDelta:
        # Both come from evaluation (classification_metrics), which measures both.
        assert with_.accuracy is not None and without.accuracy is not None
        assert with_.macro_f1 is not None and without.macro_f1 is not None
        return cls(with_.accuracy, without.accuracy, with_.accuracy - without.accuracy,
                   with_.macro_f1, without.macro_f1, with_.macro_f1 - without.macro_f1,
                   n_synthetic, same_fit, {})


@dataclass
class GeneratorMetrics(_Record):
    """The generator and its images. The quality fields (see :mod:`imgxfer.tasks.classify.quality`) are
    ``None`` when quality was not measured, and left out of metrics.json then."""

    OMIT_NONE: ClassVar[bool] = True

    name: str | None = None
    synthesis: str | None = None
    conditioning: list[str] | None = None
    steps: int | None = None
    synthetic_images: int | None = None
    filter: dict[str, Any] | None = None  # --synthetic-filter: what it kept
    cas: float | None = None
    cas_real_images: int | None = None
    cas_steps: int | None = None
    cas_real: float | None = None
    # 95% Wilson intervals of CAS and CAS real on cas_test_images real test images.
    cas_interval: list[float] | None = None
    cas_real_interval: list[float] | None = None
    cas_test_images: int | None = None
    label_kept: float | None = None
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    fid_real: float | None = None
    kid_real_mean: float | None = None
    fid_real_spread: float | None = None  # the floor's bootstrap standard deviation
    nearest_shot: float | None = None
    nearest_shot_real: float | None = None
    per_class: list[dict[str, Any]] | None = None
    feature_space: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def quality(self) -> dict[str, Any]:
        """The measured quality fields (for logs and the report's summary line)."""
        return {k: v for k, v in self.to_json().items()
                if k not in ("name", "per_class") and v is not None}


# The baseline of every classify run (metrics.json's ``baselines``): the source-trained
# encoder, frozen, with a linear head fitted on source images only.
SOURCE_MODEL = "source model"


@dataclass
class RunMetrics:
    """metrics.json of one run."""

    imgxfer_version: str
    seed: int
    device: str
    data: dict[str, Any]  # source, target (labelled/unlabelled/test), classes, notes
    encoder: dict[str, Any]  # name, feature_dim, weights, and what pretraining reported
    target: TargetMetrics
    adapters: dict[str, AdapterMetrics]
    generator: GeneratorMetrics | None = None
    synthetic_delta: dict[str, SyntheticDelta] | None = None  # --compare-synthetic
    # What a reader judges the run against, on the same test split: "source model" (the
    # source-trained encoder with a linear head fitted on source images only).
    baselines: dict[str, AdapterMetrics] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    # The report's explanations figure: method, layer, figure (file name), adapters, and per
    # image its test index, label, correct (by the run's classifier), predicted and
    # confidence per adapter (imgxfer.tasks.classify.stages.explain); None when none were made.
    explanations: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    ORDER: ClassVar[tuple[str, ...]] = ("imgxfer_version", "seed", "device", "data", "encoder",
                                        "generator", "adapters", "baselines",
                                        "synthetic_delta", "target",
                                        "timings_s", "explanations")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.ORDER:
            value = getattr(self, key)
            if key == "generator" and value is not None:
                value = value.to_json()
            elif key == "target":
                value = value.to_json()
            elif key in ("adapters", "baselines", "synthetic_delta") and value is not None:
                value = {n: r.to_json() for n, r in value.items()}
            elif value is None:
                continue
            out[key] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMetrics:
        delta, baselines = data.get("synthetic_delta"), data.get("baselines")
        return cls(
            imgxfer_version=data.get("imgxfer_version", "?"), seed=data.get("seed", 0),
            device=data.get("device", "?"), data=data.get("data", {}),
            encoder=data.get("encoder", {}),
            target=TargetMetrics.from_json(data.get("target", {})),
            adapters={n: AdapterMetrics.from_json(r) for n, r in data.get("adapters", {}).items()},
            generator=(GeneratorMetrics.from_json(data["generator"])
                       if "generator" in data else None),
            synthetic_delta=(None if delta is None else
                             {n: SyntheticDelta.from_json(r) for n, r in delta.items()}),
            baselines=(None if baselines is None else
                       {n: AdapterMetrics.from_json(r) for n, r in baselines.items()}),
            timings_s=data.get("timings_s", {}), explanations=data.get("explanations"),
            extra={k: v for k, v in data.items() if k not in cls.ORDER})

    @classmethod
    def read(cls, path: str | Path) -> RunMetrics:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


class Timings(dict[str, float]):
    """Seconds per stage, in the order the stages ran (metrics.json's ``timings_s``)."""

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.items()}
