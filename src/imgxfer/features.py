"""Encoding images to feature vectors with a (frozen) encoder, batched, in inference mode."""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def encode(encoder: nn.Module, images: torch.Tensor, device: torch.device,
           batch_size: int = 256) -> torch.Tensor:
    """Features [N, D] on CPU for raw [0,1] images [N,C,H,W]; eval mode, batched.
    Preprocessing (channels, size, normalisation) is the encoder's own."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = encoder.preprocess(images[i:i + batch_size]).to(device)
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.feature_dim)
