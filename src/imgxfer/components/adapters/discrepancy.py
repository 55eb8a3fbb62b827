"""`coral` (Deep CORAL, Sun & Saenko 2016) and `mmd` (multi-kernel MMD as in DAN, Long et
al. 2015): align source and target feature statistics with a discrepancy loss."""

from __future__ import annotations

from typing import cast

import torch

from imgxfer.components.adapters.common import TUNABLE, Step, TrainedAdapter, check_options
from imgxfer.nn.augmentation import DEFAULT

_ALL = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance of the feature covariances, divided by 4 d^2."""
    d = source.shape[1]

    def cov(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(1, len(x) - 1)

    return (cov(source) - cov(target)).pow(2).sum() / (4 * d * d)


def mk_mmd(source: torch.Tensor, target: torch.Tensor, kernels: int = 5,
           multiplier: float = 2.0) -> torch.Tensor:
    """Squared MMD (biased estimate) with a sum of Gaussian kernels whose bandwidths are
    the mean pairwise squared distance times ``multiplier`` ** (-k//2 .. k//2)."""
    x = torch.cat([source, target])
    n, ns = len(x), len(source)
    d2 = torch.cdist(x, x).pow(2)
    base = d2.detach().sum() / max(1, n * n - n)
    base = base.clamp_min(1e-8) / multiplier ** (kernels // 2)
    k = cast(torch.Tensor, sum(torch.exp(-d2 / (base * multiplier ** i))
                               for i in range(kernels)))
    return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()


class _Discrepancy(TrainedAdapter):
    uses = _ALL
    needs_target = True
    weight = 1.0

    def discrepancy(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        source = step.labelled.get("source")
        if source is None or self.weight == 0:
            return torch.zeros((), device=step.device), {}
        target = step.forward(step.view(step.target))
        d = self.discrepancy(source.features, target.features)
        return self.weight * d, {self.name: d.item()}


class DeepCORAL(_Discrepancy):
    """Deep CORAL: match source and target feature covariances (Sun & Saenko 2016).

    Cross-entropy on the labelled source, target shots and synthetic images (weights
    ``*_weight``) plus ``coral_weight`` times the CORAL loss ||C_s - C_t||^2 / (4 d^2)
    between the encoder features of a labelled source batch and an unlabelled target batch
    (target = shots and unlabelled images; uses all four sets). Each domain's batch is
    forwarded on its own (domain-specific BatchNorm statistics); AdaBN on all target
    images at the end (``adabn``); ``probe_init`` starts the head from a linear probe.
    The default weight 50 was chosen on syndigits -> mnist (0 shots: 0.865 at 10, 0.883
    at 50); the loss is small because of the 1/(4 d^2) scaling.
    """

    name = "coral"
    tunable = {**TUNABLE, "coral_weight": ("log", 1.0, 200.0)}

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 coral_weight: float = 50.0, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, probe_init: bool = False, augment: str = DEFAULT,
                 seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=probe_init, augment=augment)
        check_options(self.name, nonnegative={"coral_weight": coral_weight})
        self.weight = coral_weight

    def discrepancy(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return coral_loss(source, target)


class MMD(_Discrepancy):
    """DAN-style MMD: multi-kernel Gaussian MMD between source and target features.

    Cross-entropy on the labelled source, target shots and synthetic images (weights
    ``*_weight``) plus ``mmd_weight`` times the squared MMD between encoder features of a
    labelled source batch and an unlabelled target batch (uses all four sets), with a sum
    of ``kernels`` Gaussian kernels whose bandwidths are spaced by factors of 2 around the
    batch's mean squared distance (Long et al. 2015). Each domain's batch is forwarded on
    its own (domain-specific BatchNorm statistics); AdaBN on all target images at the end
    (``adabn``); ``probe_init`` starts the head from a linear probe.
    """

    name = "mmd"
    tunable = {**TUNABLE, "mmd_weight": ("log", 0.1, 10.0)}

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 mmd_weight: float = 1.0, kernels: int = 5, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, probe_init: bool = False, augment: str = DEFAULT,
                 seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=probe_init, augment=augment)
        check_options(self.name, nonnegative={"mmd_weight": mmd_weight},
                      at_least_one={"kernels": kernels})
        self.weight, self.kernels = mmd_weight, kernels

    def discrepancy(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mk_mmd(source, target, self.kernels)
