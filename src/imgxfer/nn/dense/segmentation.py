"""Segmentation heads on an encoder's feature pyramid (:class:`~imgxfer.nn.dense.features.
Pyramid`): a small U-Net decoder (the default) and torchvision's FCN, DeepLabV3 and
LR-ASPP heads. Each maps the pyramid's maps to logits ``[B, C + 1, H, W]`` at the input
size (class 0 is background, :mod:`imgxfer.data.scenes`), and knows its loss, its prediction
and its pseudo-labels, which is all a task-agnostic adapter asks of a head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgxfer.data.scenes import IGNORE


def _conv(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegmentationHead(nn.Module):
    """What every segmentation head shares: the loss, the prediction and pseudo-labels
    over its logits. Subclasses define ``decode(maps) -> logits`` at the finest map's
    resolution or coarser; :meth:`forward` brings them to the input size."""

    task = "segment"
    default_threshold = 0.9  # a pixel's class probability that self-training trusts

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.decode(maps)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def loss(logits: torch.Tensor, target: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Pixel-wise cross-entropy; :data:`IGNORE` pixels do not count (a batch where
        every pixel is ignored, a pseudo-labelled batch with no confident pixel, gives 0)."""
        masks = target["masks"]
        if bool((masks == IGNORE).all()):
            return logits.sum() * 0.0, {}
        return F.cross_entropy(logits, masks, ignore_index=IGNORE), {}

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The class and its probability per pixel."""
        confidence, masks = logits.softmax(1).max(1)
        return {"masks": masks, "confidence": confidence}

    @staticmethod
    def pseudo_labels(logits: torch.Tensor, threshold: float) -> dict[str, Any]:
        """Pseudo-masks: the predicted class where its probability is at least
        ``threshold``, :data:`IGNORE` elsewhere."""
        confidence, masks = logits.detach().softmax(1).max(1)
        return {"masks": masks.masked_fill(confidence < threshold, IGNORE)}


class UNetHead(SegmentationHead):
    """A small U-Net decoder (Ronneberger et al. 2015): from the coarsest map up, upsample
    by the stride ratio, concatenate the next finer map (reduced to ``width``) and mix
    with two 3x3 convolutions; a 1x1 convolution gives the class logits."""

    def __init__(self, channels: list[int], strides: list[int], num_classes: int,
                 width: int = 32) -> None:
        super().__init__()
        self.top = _conv(channels[-1], width, 1)
        self.skips = nn.ModuleList(_conv(c, width, 1) for c in channels[:-1])
        self.mix = nn.ModuleList(nn.Sequential(_conv(2 * width, width), _conv(width, width))
                                 for _ in channels[:-1])
        self.classify = nn.Conv2d(width, num_classes + 1, 1)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = self.top(maps[-1])
        for i in reversed(range(len(maps) - 1)):
            x = F.interpolate(x, size=maps[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.mix[i](torch.cat([x, self.skips[i](maps[i])], 1))
        logits: torch.Tensor = self.classify(x)
        return logits


class CoarsestMapHead(SegmentationHead):
    """A torchvision head reading the coarsest map alone (FCN, DeepLabV3)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = self.head(maps[-1])
        return logits


def FCNHead(channels: list[int], strides: list[int], num_classes: int) -> SegmentationHead:
    """torchvision's FCN head (Long et al. 2015) on the coarsest map."""
    from torchvision.models.segmentation.fcn import FCNHead as TorchvisionFCN

    return CoarsestMapHead(TorchvisionFCN(channels[-1], num_classes + 1))


def DeepLabV3Head(channels: list[int], strides: list[int], num_classes: int
                  ) -> SegmentationHead:
    """torchvision's DeepLabV3 head (Chen et al. 2017: atrous spatial pyramid pooling)
    on the coarsest map."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return CoarsestMapHead(DeepLabHead(channels[-1], num_classes + 1))


class LRASPPHead(SegmentationHead):
    """torchvision's LR-ASPP head (Howard et al. 2019, MobileNetV3): the coarsest map
    gated by its global context, plus the map of stride 8 (or the finest there is)."""

    def __init__(self, channels: list[int], strides: list[int], num_classes: int,
                 width: int = 128) -> None:
        super().__init__()
        from torchvision.models.segmentation.lraspp import LRASPPHead as TorchvisionLRASPP

        self.low = min(range(len(strides)), key=lambda i: abs(strides[i] - 8))
        self.head = TorchvisionLRASPP(channels[self.low], channels[-1], num_classes + 1, width)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = self.head({"low": maps[self.low], "high": maps[-1]})
        return logits
