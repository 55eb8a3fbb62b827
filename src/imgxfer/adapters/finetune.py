"""`finetune`: train encoder and head on every labelled image there is, then AdaBN."""

from __future__ import annotations

import torch
from torch import nn

from imgxfer.budget import Budget
from imgxfer.classifier import Classifier
from imgxfer.data import ImageDataset, TransferData
from imgxfer.errors import UserError
from imgxfer.progress import NullProgress, Progress
from imgxfer.training import (adapt_batchnorm, augment, channels_last_training, conv_layout,
                               infinite_batches)


class FineTune:
    """Fine-tune encoder + linear head on labelled source, target shots and synthetic images.

    Each step draws one batch from every labelled set and sums their weighted losses.
    Each set goes through the network on its own, so BatchNorm sees one domain per batch;
    at the end AdaBN re-estimates BatchNorm statistics on target images (labelled and
    unlabelled), which is the only use of unlabelled target data here.
    """

    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 32,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 0.5, adabn: bool = True, seed: int = 0) -> None:
        for name, value in [("source_weight", source_weight), ("target_weight", target_weight),
                            ("synthetic_weight", synthetic_weight)]:
            if value < 0:
                raise UserError(f"finetune option {name} must be zero or more, got {value}.")
        if lr <= 0 or batch_size < 1:
            raise UserError(f"finetune needs lr > 0 and batch_size >= 1, got lr={lr}, batch_size={batch_size}.")
        self.lr, self.encoder_lr_scale, self.batch_size = lr, encoder_lr_scale, batch_size
        self.weights = {"source": source_weight, "target": target_weight,
                        "synthetic": synthetic_weight}
        self.adabn, self.seed = adabn, seed

    def fit(self, encoder: nn.Module, data: TransferData, *, budget: Budget,
            progress: Progress = NullProgress(),
            device: torch.device = torch.device("cpu")) -> Classifier:
        sets: dict[str, ImageDataset] = {
            "source": data.source, "target": data.target_labelled,
        }
        if data.synthetic is not None:
            sets["synthetic"] = data.synthetic
        sets = {k: v for k, v in sets.items() if len(v) and self.weights[k] > 0}
        if not sets:
            raise UserError("finetune has no labelled images to train on (source, target shots "
                            "and synthetic are all empty or weighted 0).")
        model = Classifier(encoder, data.target_labelled.num_classes).to(device)
        layout = channels_last_training(model, device)
        opt = torch.optim.AdamW([
            {"params": encoder.parameters(), "lr": self.lr * self.encoder_lr_scale},
            {"params": model.head.parameters(), "lr": self.lr},
        ], weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, budget.steps))
        g = torch.Generator().manual_seed(self.seed)
        streams = {k: infinite_batches(len(v), self.batch_size, seed=self.seed + i)
                   for i, (k, v) in enumerate(sets.items())}
        model.train()
        budget.start()
        step = 0
        with progress.task("adapter: finetune", total=budget.steps) as task:
            while not budget.done(step):
                loss = torch.zeros((), device=device)
                for key, ds in sets.items():
                    idx = next(streams[key])
                    x = conv_layout(encoder.preprocess(augment(ds.images[idx], generator=g))
                                    .to(device), layout)
                    loss = loss + self.weights[key] * nn.functional.cross_entropy(
                        model(x), ds.labels[idx].to(device), label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                task.advance(1, loss=loss.item())
        if self.adabn:
            target = torch.cat([data.target_labelled.images, data.target_unlabelled.images])
            adapt_batchnorm(model, encoder.preprocess(target), device)
        model.eval()
        return model

