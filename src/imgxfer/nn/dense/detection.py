"""A small anchor-free detector for the CPU: CenterNet ("Objects as Points", Zhou et al.
2019) on an encoder's feature pyramid (:class:`imgxfer.nn.dense.features.Pyramid`).

Why CenterNet: one object is one peak on a per-class heatmap plus a size and a sub-cell
offset read at that peak. There are no anchors to tune to the dataset's box shapes, no
IoU matching and no non-maximum suppression (a 3x3 max-pool finds the peaks), so the head
is a few convolutions and the loss is three dense terms: cheap on a CPU and robust with
the handful of labelled scenes a few-shot transfer has.

Conventions (those of :mod:`imgxfer.data.scenes`): boxes ``[K, 4]`` float ``x0, y0, x1, y1``
in image pixels with ``x1``/``y1`` exclusive; labels ``[K]`` int64 index the object
classes (no background). The head's maps have output stride ``stride``: cell ``(i, j)``
covers pixels ``[j * stride, (j + 1) * stride)`` and is addressed by ``j``: an object
centre ``c`` (pixels) lies at ``c / stride`` in map units, its cell ``floor(c / stride)``
and its offset the fraction left over (encoding and decoding agree on it).

Size: the ``size`` branch predicts ``log(width / stride)`` and ``log(height / stride)``,
the log of the box size in output-stride cells. The paper regresses plain sizes; the log
keeps the prediction positive and makes the L1 loss a relative error, so a 4-pixel and a
200-pixel object count alike (the paper's weight of 0.1 is kept).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

HEATMAP_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1: the paper's prior, so the focal loss starts calm
MIN_OVERLAP = 0.7  # CenterNet's IoU a box shifted by the gaussian radius still reaches


def _branch(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(width, out, 1))


def output_stride(strides: list[int]) -> int:
    """The head's stride: 4 (the paper's), else the finest pyramid stride above 4, else
    (a pyramid with only finer maps) its coarsest one."""
    coarse = [s for s in strides if s >= 4]
    return min(coarse) if coarse else max(strides)


class CenterNetHead(nn.Module):
    """Heatmap, size and offset maps from a feature pyramid (a list of maps, finest first,
    with ``channels`` and ``strides`` as :class:`~imgxfer.nn.dense.features.Pyramid` gives).

    The maps at :attr:`stride` and coarser are fused top-down as in an FPN (1x1 lateral
    convolutions to ``width``, nearest upsampling, addition) so the peaks see the coarse
    maps' context at a resolution fine enough for small objects. ``forward`` returns
    ``heatmap`` ``[B, C, h, w]`` logits, ``size`` ``[B, 2, h, w]`` (log width, log height
    in cells) and ``offset`` ``[B, 2, h, w]`` (sub-cell x, y of the centre)."""

    def __init__(self, channels: list[int], strides: list[int], num_classes: int,
                 width: int = 32) -> None:
        super().__init__()
        if len(channels) != len(strides) or not strides:
            raise ValueError(f"channels {channels} and strides {strides} must pair up")
        self.stride = output_stride(strides)
        self.levels = [i for i, s in enumerate(strides) if s >= self.stride]
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], width, 1) for i in self.levels)
        self.smooth = nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.heatmap = _branch(width, num_classes)
        self.size = _branch(width, 2)
        self.offset = _branch(width, 2)
        nn.init.constant_(cast(torch.Tensor, self.heatmap[-1].bias), HEATMAP_BIAS)

    def forward(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        used = [maps[i] for i in self.levels]
        x = self.lateral[-1](used[-1])
        for conv, fine in zip(reversed(self.lateral[:-1]), reversed(used[:-1]), strict=True):
            x = conv(fine) + F.interpolate(x, size=fine.shape[-2:], mode="nearest")
        x = self.smooth(x)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


def gaussian_radius(height: torch.Tensor, width: torch.Tensor,
                    min_overlap: float = MIN_OVERLAP) -> torch.Tensor:
    """CenterNet's radius (its reference code, as CornerNet derived it): the smallest of
    three quadratic roots, the shift of a corner that keeps IoU >= ``min_overlap``. Sizes
    and the result are in output cells."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _image_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   out_size: tuple[int, int], stride: int) -> dict[str, torch.Tensor]:
    """One image's targets: heatmap ``[C, h, w]``, and per box the flat centre index,
    log size and offset (see :func:`detection_targets`)."""
    h, w = out_size
    boxes = boxes.float().reshape(-1, 4)
    labels = labels.long().reshape(-1)
    heat = torch.zeros(num_classes, h * w)
    size = ((boxes[:, 2:] - boxes[:, :2]) / stride).clamp(min=1 / stride)  # >= 1 pixel
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    cell = centre.floor().long()
    cell[:, 0].clamp_(0, w - 1)
    cell[:, 1].clamp_(0, h - 1)
    if len(boxes):
        radius = gaussian_radius(size[:, 1].ceil(), size[:, 0].ceil()).floor().clamp(min=0)
        sigma = ((2 * radius + 1) / 6)[:, None, None]
        ys = torch.arange(h, dtype=torch.float32)[None, :, None]
        xs = torch.arange(w, dtype=torch.float32)[None, None, :]
        dy = ys - cell[:, 1, None, None]
        dx = xs - cell[:, 0, None, None]
        gauss = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
        window = (dx.abs() <= radius[:, None, None]) & (dy.abs() <= radius[:, None, None])
        heat.scatter_reduce_(0, labels[:, None].expand(-1, h * w),
                             (gauss * window).reshape(len(boxes), -1), "amax")
    return {"heatmap": heat.reshape(num_classes, h, w), "index": cell[:, 1] * w + cell[:, 0],
            "size": size.log(), "offset": centre - cell.float()}


def detection_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor],
                      num_classes: int, out_size: tuple[int, int],
                      stride: int) -> dict[str, torch.Tensor]:
    """Training targets for a batch, padded to the most boxes ``M`` of any image:

    - ``heatmap`` ``[B, C, h, w]``: a gaussian per object at its centre cell (peak exactly
      1, radius from the box size as CenterNet computes it, overlaps keep the maximum);
    - ``index`` ``[B, M]``: the flat centre cell ``y * w + x`` of each object;
    - ``mask`` ``[B, M]`` bool: which of the ``M`` slots hold an object;
    - ``size`` ``[B, M, 2]``: log width and height in cells; ``offset`` ``[B, M, 2]``:
      the centre's position within its cell (x, y in [0, 1)).

    Images with no boxes give an empty heatmap and no slots."""
    per_image = [_image_targets(b, lab, num_classes, out_size, stride)
                 for b, lab in zip(boxes, labels, strict=True)]
    most = max((len(t["index"]) for t in per_image), default=0)
    batch = len(per_image)
    out = {"heatmap": torch.stack([t["heatmap"] for t in per_image]) if per_image
           else torch.zeros(0, num_classes, *out_size),
           "index": torch.zeros(batch, most, dtype=torch.long),
           "mask": torch.zeros(batch, most, dtype=torch.bool),
           "size": torch.zeros(batch, most, 2), "offset": torch.zeros(batch, most, 2)}
    for i, t in enumerate(per_image):
        k = len(t["index"])
        out["index"][i, :k], out["mask"][i, :k] = t["index"], True
        out["size"][i, :k], out["offset"][i, :k] = t["size"], t["offset"]
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
               beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, summed (not yet normalised):
    peaks (target 1) are positives; elsewhere the ``(1 - target) ** beta`` factor spares
    the pixels near a centre, which are almost right. Computed from logits with
    ``logsigmoid`` so no probability clamp is needed."""
    prob = torch.sigmoid(logits)
    pos = target.eq(1).float()
    pos_loss = F.logsigmoid(logits) * (1 - prob) ** alpha * pos
    neg_loss = F.logsigmoid(-logits) * prob ** alpha * (1 - target) ** beta * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum())


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``maps`` ``[B, D, h, w]`` read at flat cells ``index`` ``[B, M]``: ``[B, M, D]``."""
    flat = maps.flatten(2)
    return flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def detection_loss(outputs: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                   labels: list[torch.Tensor], stride: int, *, size_weight: float = 0.1,
                   offset_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's loss for a batch: focal heatmap loss + ``size_weight`` x L1 on log sizes
    + ``offset_weight`` x L1 on offsets, each summed over the batch and divided by its
    number of objects (at least 1, so a batch of empty images trains the heatmap towards
    background only). Returns the loss and its parts as floats for logging."""
    heatmap = outputs["heatmap"]
    # Targets are drawn on the CPU (small, built box by box), then moved to the outputs.
    targets = detection_targets([b.detach().cpu() for b in boxes],
                                [lab.detach().cpu() for lab in labels], heatmap.shape[1],
                                cast("tuple[int, int]", tuple(heatmap.shape[-2:])), stride)
    targets = {k: v.to(heatmap.device) for k, v in targets.items()}
    mask = targets["mask"].unsqueeze(-1).float()
    count = targets["mask"].sum().clamp(min=1)
    heat = focal_loss(heatmap.float(), targets["heatmap"]) / count
    size = ((_gather(outputs["size"].float(), targets["index"]) - targets["size"]).abs()
            * mask).sum() / count
    offset = ((_gather(outputs["offset"].float(), targets["index"]) - targets["offset"]).abs()
              * mask).sum() / count
    loss = heat + size_weight * size + offset_weight * offset
    parts = {"heatmap": heat, "size": size, "offset": offset}
    return loss, {name: float(value.detach()) for name, value in parts.items()}


@torch.no_grad()
def decode(outputs: dict[str, torch.Tensor], stride: int, *, top_k: int = 100,
           score_threshold: float = 0.05,
           image_size: tuple[int, int] | None = None) -> list[dict[str, torch.Tensor]]:
    """Detections per image: ``boxes`` ``[K, 4]`` float pixels ``x0, y0, x1, y1``,
    ``scores`` ``[K]`` (sigmoid of the heatmap), ``labels`` ``[K]``, best first.

    A peak is a heatmap value that equals the maximum of its 3x3 neighbourhood (the
    paper's max-pool in place of NMS); the ``top_k`` best peaks over all classes with a
    score >= ``score_threshold`` are kept. Boxes are clipped to the image, whose size is
    ``image_size`` (height, width) or else the maps' size times ``stride``."""
    heat = torch.sigmoid(outputs["heatmap"].float())
    batch, classes, h, w = heat.shape
    height, width = image_size or (h * stride, w * stride)
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, flat = peaks.flatten(1).topk(min(top_k, classes * h * w), dim=1)
    labels, cells = flat // (h * w), flat % (h * w)
    size = _gather(outputs["size"].float(), cells).exp() * stride
    offset = _gather(outputs["offset"].float(), cells)
    centre = torch.stack([cells % w, cells // w], dim=-1).float()
    centre = (centre + offset) * stride
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    result = []
    for i in range(batch):
        keep = scores[i] >= score_threshold
        result.append({"boxes": boxes[i][keep], "scores": scores[i][keep],
                       "labels": labels[i][keep]})
    return result


def pseudo_targets(decoded: list[dict[str, torch.Tensor]],
                   threshold: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pseudo-boxes for self-training: per image the detections with score >=
    ``threshold`` as ``(boxes, labels)`` lists, the form :func:`detection_loss` takes
    (an image with none gets empty tensors, which trains it towards background)."""
    boxes, labels = [], []
    for det in decoded:
        keep = det["scores"] >= threshold
        boxes.append(det["boxes"][keep].detach().float().reshape(-1, 4))
        labels.append(det["labels"][keep].detach().long().reshape(-1))
    return boxes, labels


class DetectionHead(CenterNetHead):
    """:class:`CenterNetHead` as a dense model's head (:mod:`imgxfer.nn.dense.model`): its
    loss, decoded detections and pseudo-boxes over the outputs of one forward pass."""

    task = "detect"
    default_threshold = 0.5  # a box score that self-training trusts

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]  # type: ignore[override]
                ) -> dict[str, torch.Tensor]:
        self.image_size = tuple(size)  # decoding clips boxes to the image
        return super().forward(maps)

    def loss(self, outputs: dict[str, torch.Tensor], target: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return detection_loss(outputs, target["boxes"], target["labels"], self.stride)

    def predict(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return decode(outputs, self.stride, image_size=getattr(self, "image_size", None))

    def pseudo_labels(self, outputs: dict[str, torch.Tensor], threshold: float
                      ) -> dict[str, Any]:
        decoded = decode(outputs, self.stride, score_threshold=threshold,
                         image_size=getattr(self, "image_size", None))
        boxes, labels = pseudo_targets(decoded, threshold)
        return {"boxes": boxes, "labels": labels}
