"""A dense model on the target's test scenes: its predictions and the task's metrics
(:mod:`imgxfer.tasks.dense.metrics`, through torchmetrics)."""

from __future__ import annotations

from typing import Any

import torch

from imgxfer.data.scenes import SceneDataset
from imgxfer.nn.dense.model import DenseModel
from imgxfer.nn.dense.training import predict

# Each task's scores as tables show them (metrics.json key, label), the headline first,
# and the key of its per-class scores.
COLUMNS = {"segment": [("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy")],
           "detect": [("map_50", "mAP@0.5"), ("map", "mAP@[.5:.95]"), ("map_75", "mAP@0.75")]}
PER_CLASS = {"segment": ("iou", "IoU"), "detect": ("ap", "AP@[.5:.95]")}
HEADLINE = {task: columns[0] for task, columns in COLUMNS.items()}


def evaluate(model: DenseModel, test: SceneDataset, device: torch.device
             ) -> tuple[list[Any], dict[str, Any]]:
    """Per-scene predictions (masks [H, W], or dicts of boxes, scores and labels) and
    the metrics over the whole test split."""
    from imgxfer.tasks.dense import metrics

    chunks = predict(model, test, device)
    if model.task == "segment":
        masks = torch.cat([c["masks"] for c in chunks])
        assert test.masks is not None  # a segment model's scenes are read with their masks
        scores = metrics.segmentation_metrics(masks, test.masks, test.class_names)
        return list(masks), scores
    detections = [d for chunk in chunks for d in chunk]
    assert test.boxes is not None and test.box_labels is not None
    scores = metrics.detection_metrics(detections, test.boxes, test.box_labels,
                                       test.class_names)
    return detections, scores


def headline(metrics: dict[str, Any], task: str) -> str:
    key, label = HEADLINE[task]
    return f"{label} {metrics[key]:.3f}"
