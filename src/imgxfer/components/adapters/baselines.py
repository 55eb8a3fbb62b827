"""`source-only` and `target-only`: the two baselines every transfer method is compared to."""

from __future__ import annotations

from imgxfer.components.adapters.common import TUNABLE_LR, TrainedAdapter
from imgxfer.components.adapters.regularizers import TUNABLE_REGULARIZERS, Regularization
from imgxfer.nn.augmentation import DEFAULT


class SourceOnly(TrainedAdapter):
    """Baseline: fine-tune encoder + head on labelled source only, no target data at all.

    Uses only the labelled source (``uses = {"source"}``): no target shots, no unlabelled
    target, no synthetic images and no AdaBN, so BatchNorm keeps source statistics. It
    measures how far the source model carries to the target unaided.
    """

    name = "source-only"
    tunable = TUNABLE_LR
    uses = frozenset({"source"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 augment: str = DEFAULT, seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": 1.0}, adabn=False, seed=seed, augment=augment)

    def no_labelled_message(self) -> str:
        return "source-only needs labelled source images, and the source is empty."


class TargetOnly(TrainedAdapter):
    """Baseline: fine-tune the given encoder + a new head on the labelled target shots only.

    Uses only the labelled target shots (``uses = {"target_labelled"}``); it is the
    "k shots, no transfer method" baseline (from scratch if the encoder is untrained).
    Training batches are target images only, so BatchNorm ends with target statistics
    and AdaBN is not needed. Needs at least one shot.

    Regularisers (:mod:`imgxfer.components.adapters.regularizers`, all off by default): ``l2sp``
    pulls the encoder towards its source-trained weights, ``bss`` shrinks the smallest
    singular value of each batch's features, ``mix`` mixes each batch (mixup or cutmix).
    ``augment`` is the augmentation policy (the run's ``--augment``).
    """

    name = "target-only"
    tunable = {**TUNABLE_LR, **TUNABLE_REGULARIZERS}
    uses = frozenset({"target_labelled"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 64,
                 l2sp: float = 0.0, bss: float = 0.0, mix: str = "none",
                 augment: str = DEFAULT, seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"target": 1.0}, adabn=False, seed=seed, augment=augment,
                         regularization=Regularization(l2sp, bss, mix))

    def no_labelled_message(self) -> str:
        return "target-only needs labelled target images; run it with --shots 1 or more."
