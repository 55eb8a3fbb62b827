"""Stage 1: the source and target datasets and the seeded few-shot split."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from imgxfer.core.config import RunConfig
from imgxfer.data.dataset import (
    ImageDataset,
    Split,
    align_classes,
    few_shot_split,
    separate_origins,
)
from imgxfer.plugin.registry import Registry


def load_data(config: RunConfig, registry: Registry) -> tuple[ImageDataset, Split]:
    source = registry.build("datasets", config.source, config.options["source"],
                            seed=config.seed)
    target = registry.build("datasets", config.target, config.options["target"],
                            seed=config.seed + 1)
    source, target = separate_origins(align_classes(source, target), target)
    split = few_shot_split(target, config.shots, test_fraction=config.test_fraction,
                           seed=config.seed)
    return source, split


def resolve_auto_options(config: RunConfig, registry: Registry, source: ImageDataset,
                         target: ImageDataset) -> RunConfig:
    """The config with the encoder's ``in_channels`` set to the run's image channels (the
    most of source and target) when its factory defaults it to 0 (auto) and the user did
    not set it, so colour targets (mnist-m) get a colour encoder while greyscale runs
    stay greyscale; config.toml then records it, so ``imgxfer predict`` rebuilds it."""
    options = config.options["encoder"]
    defaults = registry.get("encoders", config.encoder).defaults()
    if defaults.get("in_channels") != 0 or options.get("in_channels", 0) != 0:
        return config
    channels = max(int(source.images.shape[1]), int(target.images.shape[1]))
    channels = 3 if channels >= 3 else 1
    return replace(config, options={**config.options,
                                    "encoder": {**options, "in_channels": channels}})


def describe(config: RunConfig, source: ImageDataset, split: Split) -> dict[str, Any]:
    """metrics.json's ``data`` section."""
    target = split.test
    return {
        "source": {"name": config.source, "domain": source.domain, "images": len(source)},
        "target": {"name": config.target, "domain": target.domain,
                   "labelled": len(split.labelled), "unlabelled": len(split.unlabelled),
                   "test": len(split.test)},
        "classes": list(target.class_names),
        "notes": source.notes + split.test.notes,
    }
