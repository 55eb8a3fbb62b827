"""An encoder's feature pyramid: the maps a dense head reads, from any encoder.

Encoders map images to pooled features ``[B, D]`` (:class:`imgxfer.plugin.protocols.Encoder`);
a dense head needs the maps before the pooling. Rather than asking every encoder plugin
for a new method, :class:`Pyramid` finds them by running the encoder once: for each
resolution below the input's, the last module whose output has that resolution is the
end of that stage (a ResNet's ``layer2``, smallcnn's second block). Hooks catch those
outputs on every forward pass. The encoder's own forward runs whole (its pooling is
wasted, which costs nothing next to the convolutions)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.nn.layers import output_shapes


def stage_layers(encoder: nn.Module, size: tuple[int, int]) -> list[tuple[str, int, int]]:
    """``(module name, channels, stride)`` of the last module at each resolution of
    ``encoder`` for ``size`` inputs, finest first. Modules called more than once per pass
    (a ReLU shared inside a ResNet block) are left out."""
    device = next(encoder.parameters()).device
    example = torch.zeros(1, cast(int, encoder.in_channels), *size, device=device)
    shapes = output_shapes(encoder, lambda: encoder(example))
    last: dict[int, tuple[str, int]] = {}  # height -> (name, channels), last call wins
    for name, shape in shapes:
        if len(shape) == 4 and 1 < shape[2] < size[0]:
            last[shape[2]] = (name, shape[1])
    return [(name, channels, size[0] // height)
            for height, (name, channels) in sorted(last.items(), reverse=True)]


class Pyramid(nn.Module):
    """``encoder`` as a feature pyramid: ``forward(x)`` returns its stage outputs, finest
    first; ``channels`` and ``strides`` describe them. ``size`` is the input size the
    stages were found at (any multiple of the coarsest stride works afterwards)."""

    def __init__(self, encoder: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.encoder = encoder
        stages = stage_layers(encoder, size)
        if not stages:
            raise UserError(f"the encoder {type(encoder).__name__} has no layer with a spatial "
                            "output ([B, C, H, W]) smaller than its input; a segmentation or "
                            "detection head needs its feature maps.")
        self.layers = [name for name, _, _ in stages]
        self.channels = [c for _, c, _ in stages]
        self.strides = [s for _, _, s in stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Hooks are added per pass, not kept: a deep-copied model (every adapter fits a
        # copy) would otherwise carry hooks that write into the original's dictionary.
        maps: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Any:
            return lambda module, args, output: maps.__setitem__(name, output)

        handles = [self.encoder.get_submodule(n).register_forward_hook(keep(n))
                   for n in self.layers]
        try:
            self.encoder(x)
        finally:
            for handle in handles:
                handle.remove()
        return [maps[n] for n in self.layers]
