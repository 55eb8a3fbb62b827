"""`linear` (linear probe on a frozen encoder) and `lp-ft` (linear probe, then fine-tuning,
Kumar et al. 2022)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from imgxfer.components.adapters.common import TUNABLE_WEIGHTS, TrainedAdapter, check_options
from imgxfer.components.adapters.regularizers import TUNABLE_REGULARIZERS, Regularization
from imgxfer.core.budget import Budget
from imgxfer.core.progress import NullProgress, Progress
from imgxfer.data.dataset import TransferData
from imgxfer.nn.augmentation import DEFAULT
from imgxfer.nn.classifier import Classifier
from imgxfer.nn.probe import fit_probe


class LinearProbe:
    """Linear probe: logistic regression on frozen encoder features.

    Fits a multinomial logistic regression (scikit-learn, L-BFGS, L2 strength ``1/c`` on
    standardised features) to the features of the labelled target shots, the labelled
    source and the synthetic images; each set counts with its weight in total, whatever
    its size (defaults: source 1, target shots 1, synthetic 0.5 — with 0 shots it is a
    probe on source features). The encoder is never trained. With ``adabn`` (default)
    each set is encoded with BatchNorm statistics re-estimated on that set, and the
    returned classifier keeps the statistics of all target images (labelled and
    unlabelled), which is its only use of unlabelled target data. The step budget does not
    apply: the probe is solved to convergence (at most ``max_iter`` L-BFGS iterations).
    ``feature_cache`` (default on) keeps the features in the on-disk cache
    (``imgxfer cache`` shows and clears it).
    """

    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})
    trains_by_steps = False  # solved to convergence: --adapter-steps does not apply
    # L2 strength 1/c over four decades around the default, and the sets' weights.
    tunable = {"c": ("log", 0.01, 100.0), **TUNABLE_WEIGHTS}

    def __init__(self, c: float = 1.0, max_iter: int = 1000, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, feature_cache: bool = True) -> None:
        check_options("linear", positive={"c": c}, at_least_one={"max_iter": max_iter},
                      nonnegative={"source_weight": source_weight, "target_weight": target_weight,
                                   "synthetic_weight": synthetic_weight})
        self.c, self.max_iter, self.adabn = c, max_iter, adabn
        self.feature_cache = feature_cache
        self.weights = {"source": source_weight, "target": target_weight,
                        "synthetic": synthetic_weight}

    def fit(self, encoder: nn.Module, data: TransferData, *, budget: Budget,
            progress: Progress = NullProgress(),
            device: torch.device = torch.device("cpu")) -> Classifier:
        budget.start()
        with progress.task("adapter: linear", total=budget.steps) as task:
            model = fit_probe(encoder, data, self.weights, c=self.c, max_iter=self.max_iter,
                              adabn=self.adabn, device=device, name="linear",
                              cache=self.feature_cache)
            # Adapters get a step budget; a time-only one (None) would advance nothing.
            task.advance(cast(int, budget.steps))
        model.eval()
        return model


class LinearProbeFineTune(TrainedAdapter):
    """LP-FT (Kumar et al. 2022): linear probe first, then fine-tune everything at a small lr.

    The head starts from the `linear` probe's logistic regression (same sets and
    weights), so fine-tuning begins with a good head and distorts the pretrained features
    less than a random head would. Fine-tuning then trains encoder and head on the
    labelled source, target shots and synthetic images (weights as in `linear`), one
    batch per set forwarded on its own (domain-specific BatchNorm statistics), at
    ``lr`` for head and encoder alike (3e-4: better than 1e-4 on syndigits -> mnist at 0
    and 10 shots). AdaBN on all target images (labelled and unlabelled) at the end
    (``adabn``) is its only use of unlabelled target data. ``feature_cache`` as in `linear`.

    Regularisers (:mod:`imgxfer.components.adapters.regularizers`, all off by default): ``l2sp``
    pulls the encoder towards its source-trained weights, ``bss`` shrinks the smallest
    singular value of each batch's features, ``mix`` mixes each batch (mixup or cutmix).
    ``augment`` is the augmentation policy (the run's ``--augment``).
    """

    name = "lp-ft"
    tunable = {"lr": ("log", 3e-5, 3e-3), "encoder_lr_scale": ("float", 0.1, 1.0),
               "c": ("log", 0.01, 100.0), **TUNABLE_WEIGHTS, **TUNABLE_REGULARIZERS}
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 3e-4, encoder_lr_scale: float = 1.0, batch_size: int = 64,
                 c: float = 1.0, max_iter: int = 1000, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, feature_cache: bool = True, l2sp: float = 0.0,
                 bss: float = 0.0, mix: str = "none", augment: str = DEFAULT,
                 seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=True, probe_c=c, probe_max_iter=max_iter,
                         feature_cache=feature_cache, augment=augment,
                         regularization=Regularization(l2sp, bss, mix))
