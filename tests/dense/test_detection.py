"""The CenterNet head: targets and decoding agree, the loss trains a tiny model to find
rectangles, and images without objects work everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from imgxfer.nn.dense.detection import (
    CenterNetHead,
    decode,
    detection_loss,
    detection_targets,
    output_stride,
    pseudo_targets,
)

torch.set_num_threads(1)


class TinyPyramid(nn.Module):
    """Three stride-2 stages (strides 2, 4, 8), a stand-in for an encoder's pyramid."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, width, 2 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                          nn.BatchNorm2d(chans[i + 1]), nn.ReLU())
            for i in range(3))
        self.channels, self.strides = chans[1:], [2, 4, 8]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def outputs_from_targets(targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head outputs that are exactly the targets (logits of the heatmap)."""
    batch, _, h, w = targets["heatmap"].shape
    size, offset = torch.zeros(batch, 2, h * w), torch.zeros(batch, 2, h * w)
    for i in range(batch):
        keep = targets["mask"][i]
        size[i][:, targets["index"][i][keep]] = targets["size"][i][keep].T
        offset[i][:, targets["index"][i][keep]] = targets["offset"][i][keep].T
    return {"heatmap": torch.logit(targets["heatmap"].clamp(1e-4, 1 - 1e-4)),
            "size": size.view(batch, 2, h, w), "offset": offset.view(batch, 2, h, w)}


BOXES = [torch.tensor([[3.0, 5.0, 20.0, 17.0], [30.0, 30.0, 60.0, 62.0], [40.0, 2.0, 47.0, 9.0]]),
         torch.zeros(0, 4),
         torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
LABELS = [torch.tensor([0, 2, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]


def test_output_stride_prefers_four():
    assert output_stride([2, 4, 8]) == 4
    assert output_stride([2, 4, 8, 16, 32]) == 4
    assert output_stride([8, 16]) == 8
    assert output_stride([2]) == 2


def test_targets_decode_round_trip():
    targets = detection_targets(BOXES, LABELS, 3, (16, 16), 4)
    assert targets["heatmap"].shape == (3, 3, 16, 16)
    assert targets["mask"].sum(1).tolist() == [3, 0, 1]
    assert targets["heatmap"][1].sum() == 0  # the empty image
    found = decode(outputs_from_targets(targets), 4)
    for det, boxes, labels in zip(found, BOXES, LABELS, strict=True):
        assert len(det["boxes"]) == len(boxes)
        if len(boxes):
            iou = box_iou(det["boxes"], boxes)
            best = iou.max(1)
            assert bool((best.values > 0.9).all())
            assert det["labels"].tolist() == labels[best.indices].tolist()


def test_heatmap_peaks_are_one_and_gaussian():
    targets = detection_targets(BOXES[:1], LABELS[:1], 3, (16, 16), 4)
    heat = targets["heatmap"][0]
    assert int(heat.eq(1).sum()) == 3
    big = heat[2]  # the 30x32 pixel box: a radius of more than one cell
    y, x = divmod(int(targets["index"][0, 1]), 16)
    assert big[y, x] == 1 and 0 < big[y, x + 1] < 1 and big[y, x + 1] == big[y, x - 1]


def test_loss_is_zero_ish_for_perfect_outputs_and_works_without_objects():
    targets = detection_targets(BOXES, LABELS, 3, (16, 16), 4)
    loss, parts = detection_loss(outputs_from_targets(targets), BOXES, LABELS, 4)
    assert parts["size"] == pytest.approx(0, abs=1e-6)
    assert parts["offset"] == pytest.approx(0, abs=1e-6)
    assert float(loss) < 0.1
    empty = {"heatmap": torch.zeros(2, 3, 8, 8, requires_grad=True),
             "size": torch.zeros(2, 2, 8, 8), "offset": torch.zeros(2, 2, 8, 8)}
    loss, parts = detection_loss(empty, [torch.zeros(0, 4)] * 2,
                                 [torch.zeros(0, dtype=torch.long)] * 2, 4)
    loss.backward()
    assert parts["heatmap"] > 0 and parts["size"] == 0
    found = decode({k: v.detach() for k, v in empty.items()}, 4, score_threshold=0.6)
    assert [len(d["boxes"]) for d in found] == [0, 0]
    assert found[0]["boxes"].shape == (0, 4) and found[0]["labels"].dtype == torch.long


def rectangles(n: int, size: int, seed: int = 0):
    """Images with one or two filled rectangles: class 0 red, class 1 green."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, size, size)
    boxes, labels = [], []
    for i in range(n):
        rows, labs = [], []
        for k in range(1 + i % 2):
            w, h = (int(v) for v in torch.randint(8, size // 2, (2,), generator=g))
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = k * size // 2 + int(torch.randint(0, size // 2 - h + 1, (1,), generator=g))
            images[i, k, y0:y0 + h, x0:x0 + w] = 1
            rows.append([x0, y0, x0 + w, y0 + h])
            labs.append(k)
        boxes.append(torch.tensor(rows, dtype=torch.float32))
        labels.append(torch.tensor(labs))
    return images, boxes, labels


def test_tiny_model_overfits_rectangles():
    torch.manual_seed(0)
    images, boxes, labels = rectangles(3, 48)
    pyramid = TinyPyramid()
    head = CenterNetHead(pyramid.channels, pyramid.strides, num_classes=2, width=32)
    assert head.stride == 4
    params = list(pyramid.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(250):
        loss, _ = detection_loss(head(pyramid(images)), boxes, labels, head.stride)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < first / 5
    pyramid.eval()
    head.eval()
    with torch.no_grad():
        found = decode(head(pyramid(images)), head.stride, score_threshold=0.3)
    for det, truth, truth_labels in zip(found, boxes, labels, strict=True):
        assert len(det["boxes"]) == len(truth)
        best = box_iou(det["boxes"], truth).max(1)
        assert bool((best.values > 0.7).all()), best.values
        assert det["labels"].tolist() == truth_labels[best.indices].tolist()


def test_head_on_a_coarse_pyramid_and_pseudo_targets():
    maps = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]  # strides 8, 16 at 64 px
    head = CenterNetHead([8, 16], [8, 16], num_classes=4, width=8)
    out = head(maps)
    assert head.stride == 8
    assert out["heatmap"].shape == (2, 4, 8, 8) and out["size"].shape == (2, 2, 8, 8)
    assert float(torch.sigmoid(out["heatmap"].detach()).mean()) == pytest.approx(0.1, abs=0.05)
    found = decode(out, head.stride, top_k=5, score_threshold=0.0)
    assert all(len(d["boxes"]) == 5 for d in found)
    assert all(bool((d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()) for d in found)
    boxes, labels = pseudo_targets(found, threshold=float(found[0]["scores"][2]))
    assert len(boxes[0]) >= 3 and boxes[0].shape[1] == 4 and labels[0].dtype == torch.long
    loss, _ = detection_loss(out, boxes, labels, head.stride)
    assert torch.isfinite(loss)


def test_head_on_an_encoder_pyramid():
    features = pytest.importorskip("imgxfer.nn.dense.features")
    from imgxfer.components.encoders.smallcnn import SmallCNN

    pyramid = features.Pyramid(SmallCNN(width=8, input_size=64, in_channels=3), (64, 64))
    head = CenterNetHead(pyramid.channels, pyramid.strides, num_classes=3, width=16)
    out = head(pyramid(torch.rand(2, 3, 64, 64)))
    assert head.stride == 4 and out["heatmap"].shape == (2, 3, 16, 16)
