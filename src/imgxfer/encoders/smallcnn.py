"""`smallcnn`: a compact CNN for small images, trained on the labelled source domain."""

from __future__ import annotations

import torch
from torch import nn

from imgxfer.budget import Budget
from imgxfer.data import ImageDataset
from imgxfer.encoders.preprocess import prepare
from imgxfer.errors import UserError
from imgxfer.progress import NullProgress, Progress
from imgxfer.training import (augment, channels_last_training, conv_layout, evaluate_accuracy,
                               infinite_batches)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Compact CNN for small images (32x32), trained on the labelled source.

    Three conv blocks and global average pooling; BatchNorm everywhere so that adapters
    can re-estimate target statistics (AdaBN)."""

    def __init__(self, width: int = 32, input_size: int = 32, in_channels: int = 0,
                 lr: float = 2e-3, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        if width < 4 or input_size < 8 or in_channels not in (0, 1, 3):
            raise UserError(
                "smallcnn needs width >= 4, input_size >= 8 and in_channels 0 (auto), 1 or 3, got "
                f"width={width}, input_size={input_size}, in_channels={in_channels}."
            )
        # 0 (auto): `imgxfer run` sets the run's image channels (pipeline.resolve_auto_options);
        # built alone it reads greyscale.
        in_channels = in_channels or 1
        torch.manual_seed(seed)
        self.features = nn.Sequential(_block(in_channels, width), _block(width, 2 * width),
                                      _block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 4 * width
        self.input_size = (input_size, input_size)
        self.in_channels = in_channels
        self.weights_source = "random"
        self.lr, self.batch_size, self.seed = lr, batch_size, seed

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return prepare(images, channels=self.in_channels, size=self.input_size,
                       mean=[0.5] * self.in_channels, std=[0.5] * self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    pretrains = True  # has pretrain() (imgxfer.protocols.Encoder)

    def pretrain(self, source: ImageDataset, *, budget: Budget, progress: Progress = NullProgress(),
                 device: torch.device = torch.device("cpu")) -> dict[str, float]:
        """Supervised training on the source with a temporary linear head; 10% of the
        source is held out so the result is reported without touching target labels."""
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(source), generator=g)
        n_val = max(1, len(source) // 10)
        val, train = source.subset(order[:n_val]), source.subset(order[n_val:])
        head = nn.Linear(self.feature_dim, source.num_classes).to(device)
        model = nn.Sequential(self, head).to(device)
        layout = channels_last_training(model, device)
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(1, budget.steps))
        batches = infinite_batches(len(train), self.batch_size, seed=self.seed)
        model.train()
        budget.start()
        step = 0
        with progress.task("encoder: pretrain on source", total=budget.steps) as task:
            while not budget.done(step):
                idx = next(batches)
                x = conv_layout(self.preprocess(augment(train.images[idx], generator=g).to(device)),
                                layout)
                loss = nn.functional.cross_entropy(model(x), train.labels[idx].to(device),
                                                   label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                task.advance(1, loss=loss.item())
        acc = evaluate_accuracy(model, self.preprocess(val.images), val.labels, device)
        self.weights_source = f"trained on {source.domain}"
        return {"source_val_accuracy": acc, "pretrain_steps": step}

