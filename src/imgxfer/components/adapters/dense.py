"""The built-in adapters of the dense tasks (``--task segment|detect``).

Each declares the tasks it serves (``tasks``) and what it trains on (``uses``), and its
``fit(model, data: TransferData, *, budget, progress, device)`` continues training
the run's source-trained :class:`~imgxfer.nn.dense.model.DenseModel` (a copy) and returns
it. They share :func:`imgxfer.nn.dense.training.train`; the methods differ in the labelled
sets they weigh and in their loss on unlabelled target scenes:

- ``source-only``: more source training, no target data (the lower baseline);
- ``finetune``: source, labelled target scenes and translated scenes, then AdaBN;
- ``target-only``: the labelled target scenes only (with every target label: the oracle);
- ``adabn``: no training, BatchNorm statistics re-estimated on target scenes (Li et al.
  2016);
- ``self-training``: pseudo-masks or pseudo-boxes where the model is confident on a
  target scene teach it on a photometrically perturbed view (FixMatch's recipe without
  geometric warps, which would have to move masks and boxes too);
- ``advent`` (segment): entropy minimisation and adversarial alignment of the
  self-information maps (Vu et al. 2019);
- ``adaptsegnet`` (segment): adversarial alignment of the softmax outputs (Tsai et al.
  2018).

The adversarial methods train their fully convolutional discriminator through gradient
reversal (as DANN does), in the same optimiser step as the model, with the usual ramp of
the reversal weight from 0 to ``adversarial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from imgxfer.components.adapters.common import check_options, dann_schedule, grad_reverse
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import TransferData
from imgxfer.data.images import ConcatImages
from imgxfer.data.scenes import IGNORE, SceneDataset
from imgxfer.nn.dense.model import DenseModel
from imgxfer.nn.dense.training import Recipe, colours_for, train
from imgxfer.nn.training import adapt_batchnorm

DENSE = frozenset({"segment", "detect"})
SEGMENT = frozenset({"segment"})


class DenseAdapter:
    """Supervised training on the labelled sets with weight > 0, an optional loss on
    unlabelled target scenes (:meth:`target_loss`, none here) and, with ``adabn``,
    BatchNorm statistics re-estimated on all target scenes at the end."""

    name = "dense"
    tasks = DENSE
    trains_by_steps = True
    uses = frozenset({"source"})

    def __init__(self, *, lr: float = 1e-3, encoder_lr_scale: float = 1.0,
                 batch_size: int = 16, source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 1.0, adabn: bool = False, seed: int = 0,
                 augment: str = "") -> None:
        check_options(self.name, positive={"lr": lr},
                      nonnegative={"encoder_lr_scale": encoder_lr_scale,
                                   "source_weight": source_weight,
                                   "target_weight": target_weight,
                                   "synthetic_weight": synthetic_weight},
                      at_least_one={"batch_size": batch_size})
        self.recipe = Recipe(lr, encoder_lr_scale, batch_size, seed,
                             colours=colours_for(augment, "segment or detect"))
        self.weights = {"source": source_weight, "target": target_weight,
                        "synthetic": synthetic_weight}
        self.adabn = adabn
        self.history: list[float] = []

    def labelled(self, data: TransferData) -> dict[str, tuple[SceneDataset, float]]:
        # A dense run's TransferData holds scene datasets (see TransferData).
        sets = cast("dict[str, SceneDataset | None]",
                    {"source": data.source, "target": data.target_labelled,
                     "synthetic": data.synthetic})
        uses = {"source": "source", "target": "target_labelled", "synthetic": "synthetic"}
        return {name: (ds, self.weights[name]) for name, ds in sets.items()
                if uses[name] in self.uses and self.weights[name] > 0
                and ds is not None and len(ds)}

    def target_loss(self, model: DenseModel, images: torch.Tensor, progress: float,
                    outputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def extra_modules(self, model: DenseModel, device: torch.device) -> list[nn.Parameter]:
        """Parameters the method trains besides the model's (a discriminator)."""
        return []

    def fit(self, model: DenseModel, data: TransferData, *, budget: Budget,
            progress: Progress, device: torch.device) -> DenseModel:
        labelled = self.labelled(data)
        if not labelled:
            raise UserError(f"{self.name} has no labelled scenes to train on ({self.needs()}).")
        unsupervised = type(self).target_loss is not DenseAdapter.target_loss
        self.history = train(model, labelled, self.recipe, budget=budget, device=device,
                             progress=progress, what=f"adapter: {self.name}",
                             unlabelled=(cast(SceneDataset, data.target_unlabelled)
                                         if unsupervised else None),
                             target_loss=self.target_loss if unsupervised else None,
                             extra=self.extra_modules(model, device))
        if self.adabn:
            adapt_target_batchnorm(model, data, device)
        return model

    def needs(self) -> str:
        return "it trains on the labelled source"


def adapt_target_batchnorm(model: DenseModel, data: TransferData,
                           device: torch.device) -> None:
    """AdaBN on every target scene there is (labelled and unlabelled), in chunks of 64
    (63 when that would leave a last chunk of one scene, which a pooled BatchNorm such
    as DeepLabV3's cannot normalise)."""
    images = ConcatImages([data.target_labelled.images, data.target_unlabelled.images])
    chunk = 63 if len(images) % 64 == 1 else 64
    adapt_batchnorm(model, images, device, batch_size=chunk, preprocess=model.preprocess)
    model.eval()


class SourceOnly(DenseAdapter):
    """Dense baseline: more training on the labelled source scenes only; no target data."""

    name = "source-only"
    uses = frozenset({"source"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 seed: int = 0, augment: str = "") -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         seed=seed, augment=augment)


class FineTune(DenseAdapter):
    """Dense fine-tuning on source, labelled target and translated scenes, then AdaBN.

    Each step weighs one batch of the labelled source, of the labelled target scenes and
    of the translated source scenes (``*_weight``); AdaBN on the target scenes ends it."""

    name = "finetune"
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 1.0, adabn: bool = True, seed: int = 0,
                 augment: str = "") -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         source_weight=source_weight, target_weight=target_weight,
                         synthetic_weight=synthetic_weight, adabn=adabn, seed=seed,
                         augment=augment)


class TargetOnly(DenseAdapter):
    """Dense baseline: training on the labelled target scenes only (the oracle with all).

    It starts from the source-trained model; with every target scene labelled it is the
    target oracle of the benchmarks."""

    name = "target-only"
    uses = frozenset({"target_labelled"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 seed: int = 0, augment: str = "") -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         seed=seed, augment=augment)

    def needs(self) -> str:
        return "run it with --shots 1 or more"


class AdaBN(DenseAdapter):
    """AdaBN (Li et al. 2016): BatchNorm statistics re-estimated on the target scenes.

    The source model as it is otherwise: no training."""

    name = "adabn"
    uses = frozenset({"target_labelled", "target_unlabelled"})
    trains_by_steps = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(adabn=True, seed=seed)

    def fit(self, model: DenseModel, data: TransferData, *, budget: Budget,
            progress: Progress, device: torch.device) -> DenseModel:
        adapt_target_batchnorm(model, data, device)
        return model


class SelfTraining(FineTune):
    """Self-training: confident pseudo-masks or pseudo-boxes teach a perturbed view.

    On each unlabelled target batch the model's confident predictions (probability, or
    box score, at least ``threshold``; 0: the head's own, 0.9 for a pixel's class and
    0.5 for a box) on the scene as it is become the labels of a photometrically
    perturbed view of it (brightness, contrast, noise), weighted by
    ``unlabelled_weight``; plus finetune's supervised sets and AdaBN. Both views go
    through the network as one target batch, so BatchNorm sees target statistics as
    after AdaBN."""

    name = "self-training"

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 threshold: float = 0.0, unlabelled_weight: float = 1.0,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 1.0, adabn: bool = True, seed: int = 0,
                 augment: str = "") -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         source_weight=source_weight, target_weight=target_weight,
                         synthetic_weight=synthetic_weight, adabn=adabn, seed=seed,
                         augment=augment)
        check_options(self.name, unit={"threshold": threshold},
                      nonnegative={"unlabelled_weight": unlabelled_weight})
        self.threshold, self.unlabelled_weight = threshold, unlabelled_weight
        self.generator = torch.Generator().manual_seed(seed + 1)

    def target_loss(self, model: DenseModel, images: torch.Tensor, progress: float,
                    outputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        strong = perturb(images, self.generator)
        weak_out, strong_out = _split_outputs(model(torch.cat([images, strong])), len(images))
        pseudo = model.pseudo_labels(weak_out, self.threshold
                                     or cast(float, model.head.default_threshold))
        # A scene without one confident pixel or box says nothing about where objects
        # are; taken as "all background" it would teach the detector to find nothing.
        keep = informative(pseudo)
        if not keep.any():
            return strong_out_sum(strong_out) * 0.0, {"kept": 0.0}
        loss, _ = model.loss(_rows(strong_out, keep), _rows(pseudo, keep))
        return self.unlabelled_weight * loss, {"kept": kept_fraction(pseudo)}


def perturb(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A photometric view of preprocessed images: per-image contrast (x0.6-1.4),
    brightness (+-0.4) and Gaussian noise (std 0.1), drawn from ``generator``."""
    n = len(images)
    draw: Callable[..., torch.Tensor] = (
        lambda *shape: torch.rand(*shape, generator=generator).to(images.device))
    contrast = 0.6 + 0.8 * draw(n, 1, 1, 1)
    brightness = 0.8 * draw(n, 1, 1, 1) - 0.4
    noise = torch.randn(images.shape, generator=generator).to(images.device) * 0.1
    mean = images.mean((1, 2, 3), keepdim=True)
    return (images - mean) * contrast + mean + brightness + noise


def informative(pseudo: dict[str, Any]) -> torch.Tensor:
    """Per scene of a pseudo-labelled batch: whether it has a confident pixel or box."""
    if "masks" in pseudo:
        return cast(torch.Tensor, (pseudo["masks"] != IGNORE).flatten(1).any(1))
    return torch.tensor([len(b) > 0 for b in pseudo["boxes"]])


def _rows(value: Any, keep: torch.Tensor) -> Any:
    """The kept scenes of a batch's outputs or targets (tensors, dicts, lists)."""
    if isinstance(value, torch.Tensor):
        return value[keep.to(value.device)]
    if isinstance(value, dict):
        return {k: _rows(v, keep) for k, v in value.items()}
    return [v for v, k in zip(value, keep.tolist(), strict=True) if k]


def strong_out_sum(outputs: Any) -> torch.Tensor:
    """A zero that keeps the graph (for a step whose target batch teaches nothing)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.sum()
    return cast(torch.Tensor, sum(v.sum() for v in outputs.values()))


def _split_outputs(outputs: Any, n: int) -> tuple[Any, Any]:
    """The outputs of a batch of two stacked views, as those of each view."""
    if isinstance(outputs, torch.Tensor):
        return outputs[:n], outputs[n:]
    return ({k: v[:n] for k, v in outputs.items()}, {k: v[n:] for k, v in outputs.items()})


def kept_fraction(pseudo: dict[str, Any]) -> float:
    """How much of a pseudo-labelled batch is kept: the share of confident pixels, or
    the pseudo-boxes per image."""
    if "masks" in pseudo:
        return float((pseudo["masks"] != IGNORE).float().mean())
    return sum(len(b) for b in pseudo["boxes"]) / max(1, len(pseudo["boxes"]))


def discriminator(channels: int, width: int = 32) -> nn.Module:
    """AdaptSegNet's fully convolutional discriminator, narrower for small scenes: four
    stride-2 4x4 convolutions with leaky ReLUs, one logit per location (1 = source)."""
    layers: list[nn.Module] = []
    for cin, cout in ((channels, width), (width, 2 * width), (2 * width, 4 * width)):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(4 * width, 1, 4, 2, 1))


class OutputAdversarial(FineTune):
    """What AdaptSegNet and AdvEnt share: a discriminator on a map computed from the
    segmentation logits (:meth:`domain_map`) tells source from target; the model learns
    through gradient reversal to make the target's maps look like the source's."""

    tasks = SEGMENT
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, *, adversarial: float, entropy: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        check_options(self.name, nonnegative={"adversarial": adversarial, "entropy": entropy})
        self.adversarial, self.entropy = adversarial, entropy
        self.critic: nn.Module | None = None

    def domain_map(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_modules(self, model: DenseModel, device: torch.device) -> list[nn.Parameter]:
        self.critic = discriminator(len(model.class_names) + 1).to(device)
        return list(self.critic.parameters())

    def target_loss(self, model: DenseModel, images: torch.Tensor, progress: float,
                    outputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.critic is not None
        target = model(images)
        source = outputs.get("source", outputs.get("synthetic"))
        loss = torch.zeros((), device=images.device)
        parts: dict[str, float] = {}
        if self.entropy > 0:
            ent = entropy_map(target).sum(1).mean() / math.log(target.shape[1])
            loss, parts["entropy"] = loss + self.entropy * ent, float(ent.detach())
        if self.adversarial > 0 and source is not None:
            coeff = self.adversarial * dann_schedule(progress)
            maps = torch.cat([self.domain_map(source), self.domain_map(target)])
            logits = self.critic(grad_reverse(maps, coeff))
            domains = torch.cat([torch.ones(len(source)), torch.zeros(len(target))])
            domains = domains.view(-1, 1, 1, 1).expand_as(logits).to(logits)
            d_loss = F.binary_cross_entropy_with_logits(logits, domains)
            loss, parts["domain"] = loss + d_loss, float(d_loss.detach())
        return loss, parts


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """AdvEnt's weighted self-information maps ``-p log p`` per class, [B, C, H, W]."""
    p = logits.softmax(1)
    return -p * torch.log(p.clamp_min(1e-8))


class AdaptSegNet(OutputAdversarial):
    """AdaptSegNet (Tsai et al. 2018): adversarial alignment of the softmax outputs.

    A discriminator reads the softmax outputs of source and target scenes; plus
    finetune's supervised sets and AdaBN."""

    name = "adaptsegnet"

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 adversarial: float = 0.1, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 1.0,
                 adabn: bool = True, seed: int = 0, augment: str = "") -> None:
        super().__init__(adversarial=adversarial, lr=lr, encoder_lr_scale=encoder_lr_scale,
                         batch_size=batch_size, source_weight=source_weight,
                         target_weight=target_weight, synthetic_weight=synthetic_weight,
                         adabn=adabn, seed=seed, augment=augment)

    def domain_map(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1)


class AdvEnt(OutputAdversarial):
    """AdvEnt (Vu et al. 2019): entropy minimisation and adversarial entropy alignment.

    Entropy minimisation on target scenes (``entropy``, the paper's MinEnt) and
    adversarial alignment of the self-information maps (``adversarial``); plus
    finetune's supervised sets and AdaBN."""

    name = "advent"

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 1.0, batch_size: int = 16,
                 adversarial: float = 0.1, entropy: float = 0.1, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 1.0,
                 adabn: bool = True, seed: int = 0, augment: str = "") -> None:
        super().__init__(adversarial=adversarial, entropy=entropy, lr=lr,
                         encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         source_weight=source_weight, target_weight=target_weight,
                         synthetic_weight=synthetic_weight, adabn=adabn, seed=seed, augment=augment)

    def domain_map(self, logits: torch.Tensor) -> torch.Tensor:
        return entropy_map(logits)


ADAPTERS = (SourceOnly, FineTune, TargetOnly, AdaBN, SelfTraining, AdaptSegNet, AdvEnt)
