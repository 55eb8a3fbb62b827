"""The one training loop of the dense tasks, and what it is fed: batches of scenes with
their targets (masks, or boxes and labels), drawn seeded from each set.

As the classifier adapters do (:mod:`imgxfer.components.adapters.common`), each labelled set goes
through the network on its own, so BatchNorm normalises one domain per batch; an
adapter's unlabelled-target loss forwards the target batch on its own too."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.data.images import indexed_batches
from imgxfer.data.scenes import SceneDataset
from imgxfer.nn.augmentation import recolour
from imgxfer.nn.dense.model import DenseModel

# The --augment policies a dense run takes. It augments colours only: a warp would have to
# move the masks and boxes with the pixels. "style" randomises the labelled scenes'
# colours as classification's style does (grey scenes made RGB first); "" and "none" leave
# them as they are.
DENSE_AUGMENT = ("", "none", "style")


def colours_for(augment: str, task: str = "segment") -> bool:
    """Whether ``augment`` randomises a dense run's colours; a policy that warps is refused."""
    if augment not in DENSE_AUGMENT:
        raise UserError(f"--task {task} augments colours only (augment style, none or "
                        f"auto), not {augment}: a warp would have to move the masks and "
                        "boxes too.")
    return augment == "style"


def targets(data: SceneDataset, rows: list[int], device: torch.device) -> dict[str, Any]:
    """The annotations of ``rows`` as a head's loss takes them."""
    out: dict[str, Any] = {}
    if data.masks is not None:
        out["masks"] = data.masks[rows].to(device)
    if data.boxes is not None:
        assert data.box_labels is not None
        out["boxes"] = [data.boxes[i].to(device) for i in rows]
        out["labels"] = [data.box_labels[i].to(device) for i in rows]
    return out


def index_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless seeded epochs of index batches (a set smaller than a batch is repeated)."""
    while True:
        order = torch.randperm(n, generator=generator)
        if n < batch_size:
            order = order.repeat((batch_size + n - 1) // n)[:batch_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size].tolist()


class Batches:
    """Seeded batches of one set: images with the targets of the rows they came from."""

    def __init__(self, data: SceneDataset, batch_size: int, generator: torch.Generator) -> None:
        rows = (torch.tensor(r) for r in index_batches(len(data), batch_size, generator))
        self.data, self.stream = data, indexed_batches(data.images, rows)

    def next(self, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        rows, images = next(self.stream)
        return images.to(device), targets(self.data, rows.tolist(), device)


# A method's loss on an unlabelled target batch: (model, preprocessed images, progress in
# [0, 1), the outputs of this step's labelled batches by set name) -> (loss, values to
# show). Output-space methods (AdaptSegNet, AdvEnt) compare the two domains' outputs.
TargetLoss = Callable[[DenseModel, torch.Tensor, float, dict[str, Any]],
                      tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Recipe:
    """How a dense adapter trains: AdamW at ``lr`` (the encoder at ``lr *
    encoder_lr_scale``; 0 freezes it), ``batch_size`` scenes per set and step, the seed
    of every batch draw, and whether the labelled scenes' colours are randomised
    (``--augment style``, :func:`colours_for`)."""

    lr: float = 1e-3
    encoder_lr_scale: float = 1.0
    batch_size: int = 16
    seed: int = 0
    colours: bool = False

    def optimizer(self, model: DenseModel, extra: list[nn.Parameter]) -> torch.optim.Optimizer:
        encoder = list(model.encoder.parameters())
        ids = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if id(p) not in ids]
        groups = [{"params": rest + extra, "lr": self.lr}]
        if self.encoder_lr_scale > 0:
            groups.append({"params": encoder, "lr": self.lr * self.encoder_lr_scale})
        else:
            for p in encoder:
                p.requires_grad_(False)
        return torch.optim.AdamW(groups, weight_decay=1e-4)


def train(model: DenseModel, labelled: dict[str, tuple[SceneDataset, float]],
          recipe: Recipe, *, budget: Budget, device: torch.device,
          progress: Progress = NullProgress(), what: str = "train",
          unlabelled: SceneDataset | None = None, target_loss: TargetLoss | None = None,
          extra: Sequence[nn.Parameter] = ()) -> list[float]:
    """Train ``model`` in place until ``budget`` is spent: each step one batch of every
    labelled set with weight > 0 (the head's loss, weighted) plus, with ``target_loss``,
    that loss on a batch of ``unlabelled``. Returns the loss of each step."""
    g = torch.Generator().manual_seed(recipe.seed + distributed.seed_offset())
    streams = {name: (Batches(data, recipe.batch_size, g), weight)
               for name, (data, weight) in labelled.items() if weight > 0 and len(data)}
    target = (Batches(unlabelled, recipe.batch_size, g)
              if target_loss is not None and unlabelled is not None and len(unlabelled) else None)
    optimizer = recipe.optimizer(model, list(extra))
    # Its own generator, so that randomised colours do not change the batches drawn (seed
    # + 1 is taken: dense self-training's perturbations draw from it).
    colours = (torch.Generator().manual_seed(recipe.seed + 2 + distributed.seed_offset())
               if recipe.colours else None)
    model.train()
    history: list[float] = []
    with progress.task(what, total=budget.steps) as task:
        step = 0
        while not budget.done(step):
            optimizer.zero_grad(set_to_none=True)
            loss, shown = _step(model, streams, target, target_loss, device,
                                step / max(1, budget.steps or 1), colours)
            distributed.backward_step(loss, optimizer)
            history.append(float(loss.detach()))
            step += 1
            # Numbers, not text: the bar formats them, and a tracker (imgxfer.run.tracking)
            # logs them.
            task.advance(1, loss=history[-1], **shown)
    distributed.sync_buffers(model)
    return history


def _step(model: DenseModel, streams: dict[str, tuple[Batches, float]], target: Any,
          target_loss: TargetLoss | None, device: torch.device, progress: float,
          colours: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
    total = torch.zeros((), device=device)
    shown: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    with distributed.autocast():
        for name, (batches, weight) in streams.items():
            images, labels = batches.next(device)
            if colours is not None:
                images = recolour(images, colours)
            outputs[name] = model(model.preprocess(images))
            loss, _ = model.loss(outputs[name], labels)
            total = total + weight * loss
        if target is not None and target_loss is not None:
            images, _ = target.next(device)
            loss, parts = target_loss(model, model.preprocess(images), progress, outputs)
            total = total + loss
            shown = {k: float(v) for k, v in parts.items()}
    return total, shown


def predict(model: DenseModel, data: SceneDataset, device: torch.device,
            batch_size: int = 64) -> list[Any]:
    """The model's predictions (its head's ``predict``) for every scene, a chunk at a
    time, on the CPU."""
    model.eval()
    out: list[Any] = []
    with torch.no_grad():
        for images in data.images.chunks(batch_size):
            prediction = model.predict(model(model.preprocess(images.to(device))))
            out.append(_to_cpu(prediction))
    return out


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
