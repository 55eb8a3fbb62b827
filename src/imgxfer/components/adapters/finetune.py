"""`finetune`: train encoder and head on every labelled image there is, then AdaBN."""

from __future__ import annotations

from imgxfer.components.adapters.common import TUNABLE, TrainedAdapter
from imgxfer.components.adapters.regularizers import TUNABLE_REGULARIZERS, Regularization
from imgxfer.nn.augmentation import DEFAULT


class FineTune(TrainedAdapter):
    """Fine-tune encoder + linear head on labelled source, target shots and synthetic images.

    Each step draws one batch from every labelled set and sums their weighted losses.
    Each set goes through the network on its own, so BatchNorm sees one domain per batch;
    at the end AdaBN re-estimates BatchNorm statistics on target images (labelled and
    unlabelled), which is the only use of unlabelled target data here.

    Regularisers (:mod:`imgxfer.components.adapters.regularizers`, all off by default): ``l2sp``
    pulls the encoder towards its source-trained weights, ``bss`` shrinks the smallest
    singular value of each batch's features, ``mix`` mixes each batch (mixup or cutmix).
    ``augment`` is the augmentation policy (the run's ``--augment``).
    """

    name = "finetune"
    tunable = {**TUNABLE, **TUNABLE_REGULARIZERS}
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 32,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 0.5, adabn: bool = True, l2sp: float = 0.0,
                 bss: float = 0.0, mix: str = "none", augment: str = DEFAULT,
                 seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         augment=augment, regularization=Regularization(l2sp, bss, mix))
