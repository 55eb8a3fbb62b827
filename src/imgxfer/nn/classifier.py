"""The model most adapters return: an encoder and a linear head over its features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(cast(int, encoder.feature_dim), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images already preprocessed by ``encoder.preprocess``."""
        logits: torch.Tensor = self.head(self.encoder(x))
        return logits


def rebuild(encoder: nn.Module, num_classes: int,
            state: Mapping[str, torch.Tensor]) -> Classifier:
    """A saved classifier from a freshly built ``encoder`` and its ``state_dict``.

    The encoder takes its part of the state first and the head is sized afterwards: an
    encoder may grow features from what an adapter stored in it (the CLIP plugin's
    Tip-Adapter cache adds one affinity per cached image), so its ``feature_dim`` is only
    known once its state is loaded. For any other encoder this is the plain load.
    Raises torch's ``RuntimeError`` for a state that does not fit."""
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items()
                             if k.startswith("encoder.")})
    model = Classifier(encoder, num_classes)
    model.load_state_dict(state)
    return model
