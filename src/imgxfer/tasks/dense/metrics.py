"""Metrics of the dense tasks, computed by torchmetrics so the numbers are the ones other
papers and tools report (mIoU as torchmetrics averages it, COCO's mAP through a COCO
evaluator) rather than a home-grown variant.

Segmentation (:func:`segmentation_metrics`): one confusion matrix over all pixels of all
images (not a mean of per-image scores), background included as class 0, pixels whose
target is :data:`~imgxfer.data.scenes.IGNORE` not counted. ``miou`` is torchmetrics'
``MulticlassJaccardIndex(average="macro")``: the mean IoU over the classes that occur in
the target or in the prediction; a class absent from both has no IoU (0/0) and neither
counts in the mean nor appears in ``iou``.

Detection (:func:`detection_metrics`): torchmetrics' ``MeanAveragePrecision`` with COCO's
rules (101-point interpolated AP, IoU thresholds .50:.05:.95, at most 100 detections per
image, all object sizes). Boxes follow :mod:`imgxfer.data.scenes` (``x0, y0, x1, y1`` pixels,
``x1``/``y1`` exclusive), which is what COCO's area ``w * h`` assumes.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from imgxfer.core.errors import UserError
from imgxfer.data.scenes import IGNORE

CHUNK_PIXELS = 1 << 22  # pixels per confusion-matrix update: bounded memory on big test sets
COCO_BACKENDS = ("faster_coco_eval", "pycocotools")  # torchmetrics' names, preferred first


def _torchmetrics() -> Any:
    """torchmetrics, imported on first use (the classification tasks never need it)."""
    try:
        import torchmetrics
    except ImportError:
        raise UserError("the dense metrics need torchmetrics: pip install torchmetrics.") from None
    return torchmetrics


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor,
                         class_names: list[str]) -> dict[str, Any]:
    """``miou``, per-class ``iou`` (``{"background": ..., name: ...}``, background first,
    classes absent from both target and prediction left out) and ``pixel_accuracy`` of
    predicted masks ``pred`` ``[N, H, W]`` (values 0..C) against ``target`` (0..C or
    255). Images are fed to torchmetrics in chunks of about :data:`CHUNK_PIXELS`."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    names = ["background", *class_names]
    metric = _torchmetrics().classification.MulticlassJaccardIndex(
        num_classes=len(names), ignore_index=IGNORE, average=None)
    per_chunk = max(1, CHUNK_PIXELS // max(1, pred[0].numel())) if len(pred) else 1
    for start in range(0, len(pred), per_chunk):
        metric.update(pred[start:start + per_chunk].long().flatten(),
                      target[start:start + per_chunk].long().flatten())
    confmat = metric.confmat.double()  # rows: target, columns: prediction
    if confmat.sum() == 0:
        return {"miou": float("nan"), "iou": {}, "pixel_accuracy": float("nan")}
    iou = metric.compute()
    present = (confmat.sum(0) + confmat.sum(1)) > 0
    return {"miou": float(iou[present].mean()),
            "iou": {name: float(iou[k]) for k, name in enumerate(names) if present[k]},
            "pixel_accuracy": float(confmat.diag().sum() / confmat.sum())}


def coco_backend() -> str:
    """The COCO evaluator torchmetrics should use: the first of :data:`COCO_BACKENDS`
    installed (faster-coco-eval is a compiled reimplementation, several times faster)."""
    for name in COCO_BACKENDS:
        if importlib.util.find_spec(name) is not None:
            return name
    raise UserError("detection metrics need a COCO evaluator: pip install faster-coco-eval "
                    "(or pycocotools).")


def detection_metrics(preds: list[dict[str, torch.Tensor]], boxes: list[torch.Tensor],
                      labels: list[torch.Tensor], class_names: list[str]) -> dict[str, Any]:
    """COCO box mAP of detections ``preds`` (per image ``boxes`` ``[K, 4]``, ``scores``
    ``[K]``, ``labels`` ``[K]``, as :func:`imgxfer.nn.dense.detection.decode` gives) against
    the ground truth ``boxes`` and ``labels`` per image: ``map`` (IoU .50:.95), ``map_50``,
    ``map_75`` and ``ap`` (class name -> mAP .50:.95; classes without ground truth, whose
    AP COCO leaves undefined, are left out). With no ground truth at all the maps are -1,
    COCO's "undefined"."""
    if not len(preds) == len(boxes) == len(labels):
        raise ValueError("predictions, boxes and labels differ in length")
    metric = _torchmetrics().detection.MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend=coco_backend())
    metric.update(
        [{"boxes": p["boxes"].detach().float().cpu().reshape(-1, 4),
          "scores": p["scores"].detach().float().cpu().reshape(-1),
          "labels": p["labels"].detach().long().cpu().reshape(-1)} for p in preds],
        [{"boxes": b.float().cpu().reshape(-1, 4), "labels": lab.long().cpu().reshape(-1)}
         for b, lab in zip(boxes, labels, strict=True)])
    result = metric.compute()
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    ap = {class_names[c]: v for c, v in sorted(zip(classes, per_class, strict=True)) if v >= 0}
    return {"map": float(result["map"]), "map_50": float(result["map_50"]),
            "map_75": float(result["map_75"]), "ap": ap}
