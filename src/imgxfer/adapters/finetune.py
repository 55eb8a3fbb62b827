"""`finetune`: train encoder and head on every labelled image there is, then AdaBN."""

from __future__ import annotations

from imgxfer.adapters.common import TUNABLE, TrainedAdapter


class FineTune(TrainedAdapter):
    """Fine-tune encoder + linear head on labelled source, target shots and synthetic images.

    Each step draws one batch from every labelled set and sums their weighted losses.
    Each set goes through the network on its own, so BatchNorm sees one domain per batch;
    at the end AdaBN re-estimates BatchNorm statistics on target images (labelled and
    unlabelled), which is the only use of unlabelled target data here.
    """

    name = "finetune"
    tunable = TUNABLE
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 1e-3, encoder_lr_scale: float = 0.3, batch_size: int = 32,
                 source_weight: float = 1.0, target_weight: float = 1.0,
                 synthetic_weight: float = 0.5, adabn: bool = True, seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed)
