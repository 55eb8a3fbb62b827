"""`self-training`: FixMatch-style pseudo-labelling of unlabelled target images
(Sohn et al. 2020), on top of supervised training on every labelled image."""

from __future__ import annotations

import torch
from torch import nn

from imgxfer.components.adapters.common import TUNABLE, Step, TrainedAdapter, check_options
from imgxfer.nn.augmentation import DEFAULT, Augmentation
from imgxfer.nn.preprocess import match_channels


class SelfTraining(TrainedAdapter):
    """Self-training (FixMatch): confident pseudo-labels on weak views teach strong views.

    Cross-entropy on the labelled source, target shots and synthetic images (weights
    ``*_weight``), plus, on each unlabelled target batch (shots included), the
    prediction on a weakly augmented view (the run's ``augment`` policy, a small affine
    warp by default) becomes a pseudo-label where its confidence is at least
    ``threshold``, and a strongly augmented view of the same images (``strong_augment``:
    the ``strong`` policy's larger warp with shear, contrast/brightness jitter, noise and
    an erased square by default) is trained on it with weight ``unlabelled_weight``
    (uses all four sets). The weak and strong target views go through the network as one
    target-only batch, so
    BatchNorm normalises them with target statistics, as AdaBN does at test time
    (``adabn``, on all target images at the end); the labelled sets are forwarded on
    their own. No label smoothing: it would cap confidence below the threshold. With
    ``probe_init`` (default) the head starts from a linear probe on the labelled sets, so
    pseudo-labels are confident from the first steps instead of after the head has been
    learnt (syndigits -> mnist, 0 shots: 0.94 instead of 0.84); its features go through
    the on-disk feature cache unless ``feature_cache`` is off, as in `linear`.
    """

    name = "self-training"
    tunable = {**TUNABLE, "threshold": ("float", 0.7, 0.99),
               "unlabelled_weight": ("log", 0.1, 4.0)}
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})
    needs_target = True

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 threshold: float = 0.95, unlabelled_weight: float = 1.0,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 0.5, adabn: bool = True, probe_init: bool = True,
                 feature_cache: bool = True, augment: str = DEFAULT,
                 strong_augment: str = "strong", seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         label_smoothing=0.0, probe_init=probe_init,
                         feature_cache=feature_cache, augment=augment)
        check_options(self.name, nonnegative={"unlabelled_weight": unlabelled_weight},
                      unit={"threshold": threshold})
        self.threshold, self.unlabelled_weight = threshold, unlabelled_weight
        self.strong = Augmentation(strong_augment, what=f"{self.name} option strong_augment")

    def target_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        if self.unlabelled_weight == 0:
            return torch.zeros((), device=step.device), {}
        weak, strong = step.view(step.target), step.view(step.target, self.strong)
        if weak.shape[1] != strong.shape[1]:  # --augment style made only one of them RGB
            weak, strong = match_channels(weak, 3), match_channels(strong, 3)
        logits_weak, logits_strong = step.forward(torch.cat([weak, strong])).logits.chunk(2)
        confidence, pseudo = logits_weak.detach().softmax(1).max(1)
        mask = (confidence >= self.threshold).float()
        per = nn.functional.cross_entropy(logits_strong, pseudo, reduction="none")
        loss = (per * mask).mean()
        return self.unlabelled_weight * loss, {"mask": mask.mean().item()}
