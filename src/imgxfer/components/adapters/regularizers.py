"""Regularisers for fine-tuning from the transfer-learning literature, as options of the
fine-tuning adapters (``finetune``, ``lp-ft``, ``target-only``):

- ``l2sp`` (Li et al. 2018, "Explicit inductive bias for transfer learning"): the weight of
  ``||w - w0||^2`` over the encoder's parameters, pulling them towards the source-trained
  starting point ``w0`` instead of towards zero (the encoder's weight decay is then off, as
  in the paper).
- ``bss`` (Chen et al. 2019, "Catastrophic forgetting meets negative transfer"): Batch
  Spectral Shrinkage, the weight of the squared smallest singular value of each labelled
  batch's feature matrix, which suppresses the feature directions that carry little
  transferable signal.
- ``mix``: ``mixup`` (Zhang et al. 2018) or ``cutmix`` (Yun et al. 2019) within each
  labelled batch, through Kornia; the loss is the mix of the two labels' cross-entropies.

The defaults (all off) are today's fine-tuning. The weights the papers use are 0.01 for
L2-SP and 0.001 for BSS; docs/benchmarks.md ("Augmentation policies and regularisers")
measures them here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from imgxfer.core.config import AUGMENT_POLICIES
from imgxfer.core.errors import UserError
from imgxfer.nn.augmentation import seeded

MIXES = ("none", "mixup", "cutmix")
# Options and search ranges the fine-tuning adapters add to their `tunable` mapping
# (the paper weights bracketed by about 100x, and the augmentation policy).
# `style` is left out of the search: a study's choices must stay those it was created
# with to be continued, and `style` is for grey-to-colour pairs, not a general policy.
TUNABLE_AUGMENT = tuple(p for p in AUGMENT_POLICIES if p != "style")
TUNABLE_REGULARIZERS = {"l2sp": ("log", 1e-4, 1.0), "bss": ("log", 1e-5, 0.1),
                        "mix": ("choice", *MIXES), "augment": ("choice", *TUNABLE_AUGMENT)}


@dataclass(frozen=True)
class Regularization:
    """What a fine-tuning adapter adds to its loss (all off by default)."""

    l2sp: float = 0.0
    bss: float = 0.0
    mix: str = "none"

    def check(self, adapter: str) -> Regularization:
        for name in ("l2sp", "bss"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{adapter} option {name} must be zero or more, "
                                f"got {getattr(self, name)}.")
        if self.mix not in MIXES:
            raise UserError(f"{adapter} option mix must be one of {', '.join(MIXES)}; "
                            f"got {self.mix!r}.")
        return self

    def starting_point(self, encoder: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The encoder's parameters paired with a copy of their values now (L2-SP's w0)."""
        if not self.l2sp:
            return []
        return [(p, p.detach().clone()) for p in encoder.parameters() if p.requires_grad]

    def l2sp_penalty(self, start: list[tuple[nn.Parameter, torch.Tensor]]) -> torch.Tensor | float:
        if not start:
            return 0.0
        return self.l2sp * sum(((p - p0) ** 2).sum() for p, p0 in start)

    def bss_penalty(self, features: torch.Tensor) -> torch.Tensor | float:
        """The squared smallest singular value of a batch's [N, D] features (k = 1)."""
        if not self.bss or min(features.shape) < 2:
            return 0.0
        penalty: torch.Tensor = self.bss * torch.linalg.svdvals(features.float())[-1] ** 2
        return penalty

    def mix_batch(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels_a, labels_b, lam)``: the batch mixed with a permutation of
        itself, where ``lam`` is each image's share of ``labels_b`` (0 when not mixing)."""
        if self.mix == "none" or len(images) < 2:
            return images, labels, labels, torch.zeros(len(labels), device=labels.device)
        import kornia.augmentation as K

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Kornia's notice about data_keys
            if self.mix == "mixup":  # its lambda is the permuted image's weight
                op = K.RandomMixUpV2(data_keys=["input", "class"])
            else:  # its (paper's) lambda is the share of the image's own pixels
                op = K.RandomCutMixV2(data_keys=["input", "class"], use_correct_lambda=True)
            with seeded(generator, images.device):
                mixed, info = op(images, labels)
        info = info.reshape(-1, len(labels), 3)[-1].to(labels.device)
        lam = info[:, 2].float() if self.mix == "mixup" else 1 - info[:, 2].float()
        return mixed, info[:, 0].long(), info[:, 1].long(), lam


def mixed_cross_entropy(logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
                        lam: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``(1 - lam) * CE(labels_a) + lam * CE(labels_b)``, averaged over the batch."""
    ce = nn.functional.cross_entropy
    a = ce(logits, labels_a, label_smoothing=label_smoothing, reduction="none")
    if not lam.any():
        return a.mean()
    b = ce(logits, labels_b, label_smoothing=label_smoothing, reduction="none")
    return ((1 - lam) * a + lam * b).mean()
