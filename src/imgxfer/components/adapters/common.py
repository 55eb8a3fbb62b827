"""Shared machinery of the built-in adapters: option checks, which images an adapter
trains on, gradient reversal and one training loop.

BatchNorm and domains
---------------------
Every trained adapter forwards each domain's batch through the network **on its own**
(source, target shots, synthetic and unlabelled target are separate forward passes), so
in training mode each batch is normalised with its own domain's statistics. This is
domain-specific BatchNorm: the encoder never has to cope with a mixed-domain batch, and
target features during training are normalised the same way as at test time after
AdaBN (:func:`imgxfer.nn.training.adapt_batchnorm` on all target images), which every
adapter that sees target images runs at the end by default (option ``adabn``).
Without AdaBN the running statistics left by training are a blend of all domains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from imgxfer.components.adapters.regularizers import Regularization, mixed_cross_entropy
from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.data.dataset import TransferData
from imgxfer.data.images import indexed_batches
from imgxfer.nn.augmentation import DEFAULT, Augmentation
from imgxfer.nn.classifier import Classifier
from imgxfer.nn.probe import fit_probe, labelled_sets, target_images
from imgxfer.nn.training import (
    Preprocess,
    adapt_batchnorm,
    channels_last_training,
    conv_layout,
    infinite_batches,
)

# Names of the labelled sets, as used in ``*_weight`` options.
LABELLED = ("source", "target", "synthetic")

# What `imgxfer tune` may search (imgxfer.plugin.tunable): the optimiser's step size, how fast
# the encoder moves relative to the head (0 freezes it), and each labelled set's weight.
# Ranges bracket the defaults by about 10x (lr) or from "off" to twice the default.
TUNABLE_LR = {"lr": ("log", 1e-4, 1e-2), "encoder_lr_scale": ("float", 0.0, 1.0)}
TUNABLE_WEIGHTS = {"source_weight": ("float", 0.0, 2.0), "target_weight": ("float", 0.25, 4.0),
                   "synthetic_weight": ("float", 0.0, 1.5)}
TUNABLE = {**TUNABLE_LR, **TUNABLE_WEIGHTS}


# --------------------------------------------------------------------------- options
def check_options(adapter: str, *, nonnegative: dict[str, float] | None = None,
                  positive: dict[str, float] | None = None,
                  at_least_one: dict[str, int] | None = None,
                  unit: dict[str, float] | None = None) -> None:
    """Raise a :class:`UserError` naming the first invalid option (NaN is invalid)."""
    for name, value in (nonnegative or {}).items():
        if not value >= 0:
            raise UserError(f"{adapter} option {name} must be zero or more, got {value}.")
    for name, value in (positive or {}).items():
        if not value > 0:
            raise UserError(f"{adapter} option {name} must be greater than 0, got {value}.")
    for name, value in (at_least_one or {}).items():
        if not value >= 1:
            raise UserError(f"{adapter} option {name} must be 1 or more, got {value}.")
    for name, value in (unit or {}).items():
        if not 0 <= value <= 1:
            raise UserError(f"{adapter} option {name} must be between 0 and 1, got {value}.")


# --------------------------------------------------------------------------- adversarial
class _GradientReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-coeff`` backward (Ganin & Lempitsky 2015)."""
    return cast(torch.Tensor, _GradientReverse.apply(x, coeff))


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """The usual adversarial weight ramp 2 / (1 + exp(-gamma p)) - 1, from 0 to ~1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def discriminator(in_dim: int, hidden: int) -> nn.Module:
    """A small domain classifier: two hidden layers, one logit (1 = source)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(hidden, 1))


# --------------------------------------------------------------------------- training loop
@dataclass
class Forward:
    """One domain's batch through the network: features, logits and (if any) labels."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None = None


@dataclass
class Step:
    """What a method's unlabelled-target loss sees at one step."""

    model: Classifier
    labelled: dict[str, Forward]   # by set name: "source", "target", "synthetic"
    target: torch.Tensor           # raw [0,1] unlabelled target batch (on CPU)
    progress: float                # step / total steps, in [0, 1)
    generator: torch.Generator     # for augmentation
    device: torch.device
    extra: nn.Module | None = None  # what extra_modules returned
    channels_last: bool = False     # the layout training chose (channels_last_training)
    augmentation: Augmentation = field(default_factory=Augmentation)  # the run's policy

    def view(self, images: torch.Tensor, policy: Augmentation | None = None) -> torch.Tensor:
        """An augmented view of raw images on the device (the run's policy by default; under
        ``style`` a grey batch comes back RGB)."""
        return (policy or self.augmentation)(images.to(self.device), generator=self.generator)

    def forward(self, images: torch.Tensor) -> Forward:
        """Preprocess raw [0,1] images, move them to the device and run the model."""
        preprocess = cast(Preprocess, self.model.encoder.preprocess)
        x = conv_layout(preprocess(images.to(self.device)), self.channels_last)
        f = self.model.encoder(x)
        return Forward(f, self.model.head(f))


class TrainedAdapter:
    """Base of the adapters that train encoder + head with gradient steps.

    Each step draws one batch from every labelled set with a weight above 0 and sums
    their weighted, label-smoothed cross-entropies; a method that reads unlabelled
    target images adds :meth:`target_loss` on one target batch. Subclasses set ``name``,
    ``uses``, ``needs_target`` and override the hooks. Batches are forwarded per domain
    (see the module docstring), augmented on the device by the ``augment`` policy
    (:mod:`imgxfer.nn.augmentation`), and fine-tuning adapters may add the regularisers of
    :mod:`imgxfer.components.adapters.regularizers`."""

    name = "trained"
    # The data sets it reads; None (unknown) makes --compare-synthetic train it twice.
    uses: frozenset[str] | None = None
    needs_target = False  # draws unlabelled target batches for target_loss

    def __init__(self, *, lr: float, encoder_lr_scale: float, batch_size: int,
                 weights: dict[str, float], adabn: bool, seed: int,
                 label_smoothing: float = 0.1, weight_decay: float = 1e-4,
                 probe_init: bool = False, probe_c: float = 1.0, probe_max_iter: int = 1000,
                 feature_cache: bool = False, augment: str = DEFAULT,
                 regularization: Regularization = Regularization()) -> None:
        check_options(self.name, nonnegative={f"{k}_weight": v for k, v in weights.items()},
                      positive={"lr": lr}, at_least_one={"batch_size": batch_size})
        check_options(self.name, nonnegative={"encoder_lr_scale": encoder_lr_scale})
        self.lr, self.encoder_lr_scale, self.batch_size = lr, encoder_lr_scale, batch_size
        self.weights, self.adabn, self.seed = dict(weights), adabn, seed
        self.label_smoothing, self.weight_decay = label_smoothing, weight_decay
        if probe_init:
            check_options(self.name, positive={"c": probe_c},
                          at_least_one={"max_iter": probe_max_iter})
        self.probe_init, self.probe_c, self.probe_max_iter = probe_init, probe_c, probe_max_iter
        self.feature_cache = feature_cache
        self.augmentation = Augmentation(augment, what=f"{self.name} option augment")
        self.regularization = regularization.check(self.name)

    # ----- hooks
    def extra_modules(self, feature_dim: int, num_classes: int) -> nn.Module | None:
        """Modules trained alongside the classifier (a domain discriminator...)."""
        return None

    def build_model(self, encoder: nn.Module, data: TransferData, device: torch.device) -> Classifier:
        """A fresh linear head, or with ``probe_init`` the head of a linear probe on the
        labelled sets, as LP-FT starts (each set encoded with its own BatchNorm statistics
        when ``adabn``, so ``adabn=false`` re-estimates no statistics anywhere; through the
        on-disk feature cache when ``feature_cache``)."""
        if self.probe_init:
            return fit_probe(encoder, data, self.weights, c=self.probe_c,
                             max_iter=self.probe_max_iter, adabn=self.adabn, device=device,
                             name=self.name, cache=self.feature_cache)
        return Classifier(encoder, data.target_labelled.num_classes).to(device)

    def target_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one unlabelled target batch (only when ``needs_target``)."""
        raise NotImplementedError

    def no_labelled_message(self) -> str:
        return (f"{self.name} has no labelled images to train on (source, target shots and "
                "synthetic are all empty or weighted 0).")

    # ----- the loop
    def labelled_loss(self, model: Classifier, sets: dict[str, Any], streams: dict[str, Any],
                      g: torch.Generator, device: torch.device, layout: bool
                      ) -> tuple[torch.Tensor, dict[str, Forward]]:
        """The weighted, label-smoothed cross-entropy of one augmented (and, with ``mix``,
        mixed) batch of each labelled set, each forwarded on its own (domain-specific
        BatchNorm), plus BSS on its features; and the forwards."""
        reg = self.regularization
        loss = torch.zeros((), device=device)
        outputs: dict[str, Forward] = {}
        for key, ds in sets.items():
            idx, raw = next(streams[key])
            images = self.augmentation(raw.to(device), generator=g)
            images, labels, labels_b, lam = reg.mix_batch(images, ds.labels[idx].to(device), g)
            preprocess = cast(Preprocess, model.encoder.preprocess)
            f = model.encoder(conv_layout(preprocess(images), layout))
            out = outputs[key] = Forward(f, model.head(f), labels)
            loss = loss + self.weights[key] * (
                mixed_cross_entropy(out.logits, labels, labels_b, lam, self.label_smoothing)
                + reg.bss_penalty(f))
        return loss, outputs

    def optimizer(self, model: Classifier, extra: nn.Module | None
                  ) -> torch.optim.Optimizer:
        """AdamW over encoder (``lr * encoder_lr_scale``), head and extra modules. With
        L2-SP the encoder has no weight decay: the penalty replaces it."""
        decay = 0.0 if self.regularization.l2sp else self.weight_decay
        groups = [{"params": model.encoder.parameters(), "lr": self.lr * self.encoder_lr_scale,
                   "weight_decay": decay},
                  {"params": model.head.parameters(), "lr": self.lr}]
        if extra is not None:
            groups.append({"params": extra.parameters(), "lr": self.lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def batch_streams(self, sets: dict[str, Any], pool: Any, use_target: bool
                      ) -> dict[str, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """(index, images) batches per labelled set and, with ``use_target``, of the
        unlabelled pool; read ahead by workers for streamed files, and each process of a
        distributed run draws its own (offset 0 in a single process)."""
        offset = distributed.seed_offset()
        streams = {k: indexed_batches(v.images, infinite_batches(
                       len(v), self.batch_size, seed=self.seed + i + offset))
                   for i, (k, v) in enumerate(sets.items())}
        if use_target:
            streams["unlabelled"] = indexed_batches(
                pool, infinite_batches(len(pool), self.batch_size, seed=self.seed + 10 + offset))
        return streams

    def fit(self, encoder: nn.Module, data: TransferData, *, budget: Budget,
            progress: Progress = NullProgress(),
            device: torch.device = torch.device("cpu")) -> Classifier:
        sets = labelled_sets(data, self.weights)
        if not sets:
            raise UserError(self.no_labelled_message())
        pool = target_images(data) if (self.needs_target or self.adabn) else None
        budget.start()
        model = self.build_model(encoder, data, device)
        layout = channels_last_training(model, device)
        extra = self.extra_modules(cast(int, encoder.feature_dim),
                                   data.target_labelled.num_classes)
        extra = extra.to(device) if extra is not None else None
        opt = self.optimizer(model, extra)
        # Adapters get a step budget (Budget(adapter_steps)); only generators' are time-only.
        assert budget.steps is not None
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, budget.steps))
        g = torch.Generator().manual_seed(self.seed)
        use_target = self.needs_target and pool is not None and len(pool) > 0
        if self.needs_target and not use_target:
            progress.log(f"{self.name}: no target images; training on labelled images only.")
        streams = self.batch_streams(sets, pool, use_target)
        start = self.regularization.starting_point(model.encoder)
        model.train()
        if extra is not None:
            extra.train()
        step = 0
        self.history: list[float] = []  # the loss of every step, for the run report
        with progress.task(f"adapter: {self.name}", total=budget.steps) as task:
            while not budget.done(step):
                with distributed.autocast():
                    loss, outputs = self.labelled_loss(model, sets, streams, g, device, layout)
                    info: dict[str, float] = {}
                    if use_target:
                        extra_loss, info = self.target_loss(Step(
                            model, outputs, next(streams["unlabelled"])[1],
                            step / max(1, budget.steps), g, device, extra, layout,
                            self.augmentation))
                        loss = loss + extra_loss
                    loss = loss + self.regularization.l2sp_penalty(start)
                opt.zero_grad(set_to_none=True)
                distributed.backward_step(loss, opt)
                sched.step()
                step += 1
                self.history.append(loss.item())
                task.advance(1, loss=self.history[-1], **info)
        distributed.sync_buffers(model, extra)
        if self.adabn and pool is not None and len(pool):
            adapt_batchnorm(model, pool, device, preprocess=cast(Preprocess, encoder.preprocess))
        model.eval()
        return model
