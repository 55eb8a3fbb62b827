"""Small networks the core itself needs: the convolutional net behind the built-in
``smallcnn`` encoder, which the quality measures (CAS, label kept) also train as their
fixed classifier, so measuring never depends on which encoders are registered."""

from __future__ import annotations

import torch
from torch import nn

from imgxfer.nn.preprocess import prepare


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallConvNet(nn.Module):
    """Three conv blocks and global average pooling, BatchNorm everywhere (so adapters can
    re-estimate target statistics, AdaBN), for ``input_size`` images of ``in_channels``
    channels normalised to [-1, 1]; initialised from ``seed``."""

    def __init__(self, width: int = 32, input_size: int = 32, in_channels: int = 1,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(_block(in_channels, width), _block(width, 2 * width),
                                      _block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 4 * width
        self.input_size = (input_size, input_size)
        self.in_channels = in_channels
        self.weights_source = "random"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return prepare(images, channels=self.in_channels, size=self.input_size,
                       mean=[0.5] * self.in_channels, std=[0.5] * self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.pool(self.features(x))
        return pooled.flatten(1)
