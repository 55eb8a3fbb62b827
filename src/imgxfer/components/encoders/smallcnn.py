"""`smallcnn`: a compact CNN for small images, trained on the labelled source domain."""

from __future__ import annotations

import torch
from torch import nn

from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.data.dataset import ImageDataset
from imgxfer.nn.augmentation import DEFAULT, check_policy
from imgxfer.nn.nets import SmallConvNet
from imgxfer.nn.training import evaluate_accuracy, train_supervised


class SmallCNN(SmallConvNet):
    """Compact CNN for small images (32x32), trained on the labelled source.

    Three conv blocks and global average pooling; BatchNorm everywhere so that adapters
    can re-estimate target statistics (AdaBN). ``augment`` is the augmentation policy of
    its pre-training (the run's ``--augment``)."""

    def __init__(self, width: int = 32, input_size: int = 32, in_channels: int = 0,
                 lr: float = 2e-3, batch_size: int = 64, augment: str = DEFAULT,
                 seed: int = 0) -> None:
        if width < 4 or input_size < 8 or in_channels not in (0, 1, 3):
            raise UserError(
                "smallcnn needs width >= 4, input_size >= 8 and in_channels 0 (auto), 1 or 3, got "
                f"width={width}, input_size={input_size}, in_channels={in_channels}."
            )
        # 0 (auto): `imgxfer run` sets the run's image channels
        # (stages.data.resolve_auto_options); built alone it reads greyscale.
        super().__init__(width, input_size, in_channels or 1, seed)
        self.lr, self.batch_size, self.seed = lr, batch_size, seed
        self.augment = check_policy(augment, "smallcnn option augment")

    pretrains = True  # has pretrain() (imgxfer.plugin.protocols.Encoder)

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
        with progress.task("encoder: pretrain on source", total=budget.steps) as task:
            step = train_supervised(model, self.preprocess, train.images, train.labels,
                                    budget=budget, lr=self.lr, batch_size=self.batch_size,
                                    seed=self.seed, generator=g, device=device, task=task,
                                    augment=self.augment)
        acc = evaluate_accuracy(model, val.images, val.labels, device,
                                preprocess=self.preprocess)
        self.weights_source = f"trained on {source.domain}"
        return {"source_val_accuracy": acc, "pretrain_steps": step}
