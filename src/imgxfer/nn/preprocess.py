"""Turning any [0,1] image batch into what an encoder expects: channels, size, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, the usual RGB -> grayscale weights.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

# Per-channel statistics of ImageNet (RGB), used by every ImageNet-pretrained backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    c = images.shape[1]
    if c == 4:  # RGBA: drop alpha (datasets composite onto black when they load)
        images, c = images[:, :3], 3
    if c == channels:
        return images
    if channels == 1 and c == 3:
        return (images * _LUMA.to(images)).sum(1, keepdim=True)
    if c == 1:
        return images.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot map {c}-channel images to {channels} channels")


def prepare(images: torch.Tensor, *, channels: int, size: Sequence[int],
            mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channels, then size (antialiased bilinear), then per-channel normalisation."""
    images = match_channels(images.float(), channels)
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True,
                               align_corners=False)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
