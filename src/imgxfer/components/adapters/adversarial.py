"""`dann` (Ganin & Lempitsky 2015) and `cdan` (Long et al. 2018): domain-adversarial
training through a gradient reversal layer."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from imgxfer.components.adapters.common import (
    TUNABLE,
    Step,
    TrainedAdapter,
    check_options,
    dann_schedule,
    discriminator,
    grad_reverse,
)
from imgxfer.nn.augmentation import DEFAULT

_ALL = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})


def _domain_loss(logits: torch.Tensor, n_source: int,
                 weight: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of the discriminator (source = 1, target = 0), averaged per
    domain so both count alike; also its accuracy, for the progress bar."""
    logits = logits.flatten()
    labels = torch.zeros_like(logits)
    labels[:n_source] = 1
    per = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if weight is not None:
        per = per * weight
    loss = 0.5 * (per[:n_source].mean() + per[n_source:].mean())
    acc = ((logits > 0).float() == labels).float().mean().item()
    return loss, acc


class DANN(TrainedAdapter):
    """DANN: domain-adversarial training with a gradient reversal layer (Ganin & Lempitsky).

    Cross-entropy on the labelled source, target shots and synthetic images (weights
    ``*_weight``), plus a domain discriminator (MLP) on encoder features telling labelled
    source from target images (unlabelled and shots; uses all four sets). Its gradient
    reaches the encoder reversed and scaled by ``adv_weight`` times the usual ramp
    2/(1+exp(-10 p)) - 1 over training progress p. Each domain's batch is forwarded on
    its own (domain-specific BatchNorm statistics, the same normalisation the target gets
    after AdaBN); AdaBN on all target images at the end (``adabn``). Without target
    images it trains on the labelled sets alone. ``probe_init`` starts the head from a
    linear probe (off: no gain measured on syndigits -> mnist).
    """

    name = "dann"
    tunable = {**TUNABLE, "adv_weight": ("log", 0.1, 3.0)}
    uses = _ALL
    needs_target = True

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 adv_weight: float = 1.0, hidden: int = 256, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, probe_init: bool = False, augment: str = DEFAULT,
                 seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=probe_init, augment=augment)
        check_options(self.name, nonnegative={"adv_weight": adv_weight},
                      at_least_one={"hidden": hidden})
        self.adv_weight, self.hidden = adv_weight, hidden

    def extra_modules(self, feature_dim: int, num_classes: int) -> nn.Module:
        return discriminator(feature_dim, self.hidden)

    def target_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        source = step.labelled.get("source")
        if source is None or self.adv_weight == 0:
            return torch.zeros((), device=step.device), {}
        target = step.forward(step.view(step.target))
        coeff = dann_schedule(step.progress)
        features = torch.cat([source.features, target.features])
        critic = cast(nn.Module, step.extra)  # the discriminator of extra_modules
        loss, acc = _domain_loss(critic(grad_reverse(features, coeff)), len(source.features))
        return self.adv_weight * loss, {"d_acc": acc}


class _Conditioner(nn.Module):
    """CDAN's multilinear map feature ⊗ softmax (randomised when D*C exceeds
    ``max_dim``) followed by the domain discriminator."""

    rf: torch.Tensor  # the random projections (buffers), when ``randomized``
    rg: torch.Tensor

    def __init__(self, feature_dim: int, num_classes: int, hidden: int, max_dim: int) -> None:
        super().__init__()
        self.randomized = feature_dim * num_classes > max_dim
        if self.randomized:
            self.register_buffer("rf", torch.randn(feature_dim, max_dim))
            self.register_buffer("rg", torch.randn(num_classes, max_dim))
            out_dim = max_dim
        else:
            out_dim = feature_dim * num_classes
        self.discriminator = discriminator(out_dim, hidden)

    def condition(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (features @ self.rf) * (probs @ self.rg) / math.sqrt(self.rf.shape[1])
        return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.discriminator(h)
        return logits


class CDAN(TrainedAdapter):
    """CDAN: conditional adversarial adaptation on feature ⊗ prediction (Long et al. 2018).

    Like `dann` (same labelled losses, sets, per-domain BatchNorm, gradient reversal
    ramp, AdaBN at the end; uses all four sets), but the discriminator sees the
    multilinear map of features and softmax predictions (randomised projection to
    ``max_dim`` when features x classes is larger), so class-conditional distributions
    are aligned. With ``entropy`` (CDAN+E, default) confident examples weigh more in the
    domain loss (weights 1 + exp(-entropy), normalised per domain). ``probe_init`` starts
    the head from a linear probe (off: no gain measured on syndigits -> mnist).
    """

    name = "cdan"
    tunable = {**TUNABLE, "adv_weight": ("log", 0.1, 3.0)}
    uses = _ALL
    needs_target = True

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 adv_weight: float = 1.0, entropy: bool = True, hidden: int = 256,
                 max_dim: int = 4096, source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 0.5, adabn: bool = True,
                 probe_init: bool = False, augment: str = DEFAULT, seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=probe_init, augment=augment)
        check_options(self.name, nonnegative={"adv_weight": adv_weight},
                      at_least_one={"hidden": hidden, "max_dim": max_dim})
        self.adv_weight, self.entropy, self.hidden, self.max_dim = adv_weight, entropy, hidden, max_dim

    def extra_modules(self, feature_dim: int, num_classes: int) -> nn.Module:
        return _Conditioner(feature_dim, num_classes, self.hidden, self.max_dim)

    def target_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        source = step.labelled.get("source")
        if source is None or self.adv_weight == 0:
            return torch.zeros((), device=step.device), {}
        target = step.forward(step.view(step.target))
        n = len(source.features)
        features = torch.cat([source.features, target.features])
        probs = torch.cat([source.logits, target.logits]).softmax(1).detach()
        conditioner = cast(_Conditioner, step.extra)  # what extra_modules built
        h = conditioner.condition(features, probs)
        weight = None
        if self.entropy:
            ent = -(probs * probs.clamp_min(1e-8).log()).sum(1)
            w = 1.0 + torch.exp(-ent)
            weight = torch.cat([w[:n] / w[:n].mean(), w[n:] / w[n:].mean()])
        loss, acc = _domain_loss(conditioner(grad_reverse(h, dann_schedule(step.progress))), n,
                                 weight)
        return self.adv_weight * loss, {"d_acc": acc}
