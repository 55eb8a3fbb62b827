"""Dense metrics against numbers worked out by hand."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from imgxfer.core.errors import UserError
from imgxfer.tasks.dense import metrics
from imgxfer.tasks.dense.metrics import detection_metrics, segmentation_metrics

torch.set_num_threads(1)

pytest.importorskip("torchmetrics")


def square_masks():
    """Target: class 1 on a 4x4 square of an 8x8 image; prediction: the square shifted
    two columns right. Intersection 8, union 24 pixels: IoU 1/3. Background: 40 pixels
    agree out of a union of 56: IoU 5/7. 48 of 64 pixels are right."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 0:4, 0:4] = 1
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[0, 0:4, 2:6] = 1
    return pred, target


def test_perfect_segmentation():
    _, target = square_masks()
    result = segmentation_metrics(target.clone(), target, ["cat", "dog"])
    assert result["miou"] == pytest.approx(1.0)
    assert result["pixel_accuracy"] == pytest.approx(1.0)
    assert result["iou"] == {"background": 1.0, "cat": 1.0}  # dog occurs nowhere


def test_partial_overlap_iou():
    pred, target = square_masks()
    result = segmentation_metrics(pred, target, ["cat", "dog"])
    assert list(result["iou"]) == ["background", "cat"]
    assert result["iou"]["cat"] == pytest.approx(1 / 3)
    assert result["iou"]["background"] == pytest.approx(5 / 7)
    assert result["miou"] == pytest.approx((1 / 3 + 5 / 7) / 2)
    assert result["pixel_accuracy"] == pytest.approx(48 / 64)


def test_miou_is_torchmetrics_macro_and_counts_predicted_only_classes():
    from torchmetrics.classification import MulticlassJaccardIndex

    pred, target = square_masks()
    pred[0, 6:8, 6:8] = 2  # a class only predicted: IoU 0, and it counts
    result = segmentation_metrics(pred, target, ["cat", "dog", "cow"])
    assert result["iou"]["dog"] == 0.0 and "cow" not in result["iou"]
    macro = MulticlassJaccardIndex(num_classes=4, ignore_index=255, average="macro")
    assert result["miou"] == pytest.approx(float(macro(pred.flatten(), target.flatten())))
    # background: 36 pixels agree out of a union of 48 + 44 - 36 = 56
    assert result["miou"] == pytest.approx((1 / 3 + 36 / 56 + 0) / 3)


def test_ignored_pixels_do_not_count():
    pred, target = square_masks()
    target[0, 0:4, 0:2] = 255  # every disagreeing pixel ignored
    target[0, 0:4, 4:6] = 255
    result = segmentation_metrics(pred, target, ["cat"])
    assert result["pixel_accuracy"] == pytest.approx(1.0)
    assert result["miou"] == pytest.approx(1.0)


def test_chunks_give_the_same_numbers(monkeypatch):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (7, 16, 16), generator=g)
    target[target == 3] = 255
    pred = torch.randint(0, 3, (7, 16, 16), generator=g)
    whole = segmentation_metrics(pred, target, ["a", "b"])
    monkeypatch.setattr(metrics, "CHUNK_PIXELS", 300)  # one image per update
    chunked = segmentation_metrics(pred, target, ["a", "b"])
    assert chunked.pop("iou") == pytest.approx(whole.pop("iou"))
    assert chunked == pytest.approx(whole)


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.long)}


GT_BOXES = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
            torch.tensor([[5.0, 5.0, 25.0, 15.0]])]
GT_LABELS = [torch.tensor([0, 0]), torch.tensor([1])]


def test_perfect_detection():
    preds = [det(b.tolist(), [0.9] * len(b), lab.tolist()) for b, lab in zip(GT_BOXES, GT_LABELS, strict=True)]
    result = detection_metrics(preds, GT_BOXES, GT_LABELS, ["cat", "dog", "cow"])
    assert result["map"] == pytest.approx(1.0)
    assert result["map_50"] == pytest.approx(1.0) and result["map_75"] == pytest.approx(1.0)
    assert result["ap"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}  # no cow


def test_missed_object_halves_recall():
    """One of cat's two objects found: precision 1 up to recall 0.5, so 51 of COCO's 101
    recall points have precision 1: AP 51/101. Dog, found perfectly, has AP 1."""
    preds = [det([[0, 0, 10, 10]], [0.9], [0]), det([[5, 5, 25, 15]], [0.8], [1])]
    result = detection_metrics(preds, GT_BOXES, GT_LABELS, ["cat", "dog"])
    assert result["ap"]["cat"] == pytest.approx(51 / 101)
    assert result["ap"]["dog"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx((51 / 101 + 1) / 2)


def test_loose_box_counts_only_at_low_iou_thresholds():
    """A box with IoU 0.62 matches at thresholds .50, .55 and .60 only: AP .3 over
    .50:.95, 1 at .50 and 0 at .75."""
    result = detection_metrics([det([[0, 0, 10, 6.2]], [0.9], [0])],
                               [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [torch.tensor([0])],
                               ["cat"])
    assert result["map"] == pytest.approx(0.3)
    assert result["map_50"] == pytest.approx(1.0) and result["map_75"] == pytest.approx(0.0)


def test_images_without_objects_and_no_ground_truth():
    empty = det([], [], [])
    result = detection_metrics([empty], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)],
                               ["cat"])
    assert result["map"] == -1 and result["ap"] == {}
    preds = [det([[0, 0, 10, 10]], [0.9], [0]), empty]
    result = detection_metrics(preds, [GT_BOXES[0][:1], torch.zeros(0, 4)],
                               [GT_LABELS[0][:1], torch.zeros(0, dtype=torch.long)], ["cat"])
    assert result["map"] == pytest.approx(1.0)


def test_no_coco_backend_is_one_sentence(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="faster-coco-eval"):
        detection_metrics([det([], [], [])], [torch.zeros(0, 4)],
                          [torch.zeros(0, dtype=torch.long)], ["cat"])


def test_backend_preference(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec",  # only pycocotools "installed"
                        lambda name: object() if name == "pycocotools" else None)
    assert metrics.coco_backend() == "pycocotools"
