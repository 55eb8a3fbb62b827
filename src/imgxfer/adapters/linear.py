"""`linear` (linear probe on a frozen encoder) and `lp-ft` (linear probe, then fine-tuning,
Kumar et al. 2022)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imgxfer.adapters.common import (TrainedAdapter, check_options, labelled_sets, set_weights,
                                     target_images)
from imgxfer.budget import Budget
from imgxfer.classifier import Classifier
from imgxfer.data import TransferData
from imgxfer.errors import UserError
from imgxfer.features import encode
from imgxfer.progress import NullProgress, Progress
from imgxfer.training import adapt_batchnorm


def probe_features(encoder: nn.Module, images: dict[str, torch.Tensor], target: torch.Tensor,
                   device: torch.device, adabn: bool,
                   cache: bool = False) -> dict[str, torch.Tensor]:
    """Features of each set of raw images with the frozen encoder. With ``adabn`` each set
    is encoded with BatchNorm statistics re-estimated on that set ("target" on all target
    images ``target``), and the encoder is left with target statistics when there are
    target images; otherwise the encoder's own statistics serve every set. ``cache``
    reads and writes the on-disk feature cache (:mod:`imgxfer.features`); the statistics
    are part of its key, so each set's entry is found again by the next probe of the same
    encoder on the same images (``--compare linear,lp-ft``, another seed of a frozen
    pretrained encoder...)."""
    feats: dict[str, torch.Tensor] = {}
    order = sorted(images, key=lambda k: k == "target")  # target last: its statistics stay
    for key in order:
        if adabn:
            own = target if key == "target" else images[key]
            adapt_batchnorm(encoder, encoder.preprocess(own), device)
        feats[key] = encode(encoder, images[key], device, cache=cache)
    if adabn and "target" not in images and len(target):
        adapt_batchnorm(encoder, encoder.preprocess(target), device)
    return feats


def fit_logistic_head(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                      num_classes: int, *, c: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (scikit-learn, L-BFGS) on standardised features,
    with per-image weights; returns the equivalent ``nn.Linear`` weight [K, D] and bias
    [K] on raw features. Classes without any image get a very low bias."""
    from sklearn.linear_model import LogisticRegression

    x = features.double().numpy()
    mu, sd = x.mean(0), np.maximum(x.std(0), 1e-6)
    y = labels.numpy()
    present = np.unique(y)
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -1e4)
    if len(present) == 1:
        bias[present[0]] = 0.0
    else:
        clf = LogisticRegression(C=c, max_iter=max_iter)
        clf.fit((x - mu) / sd, y, sample_weight=weights.double().numpy())
        coef, intercept = clf.coef_, clf.intercept_
        if len(present) == 2:  # scikit-learn keeps one row: logit of class 1 vs class 0
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        weight[clf.classes_] = coef / sd
        bias[clf.classes_] = intercept - (coef / sd) @ mu
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def fit_probe(encoder: nn.Module, data: TransferData, weights: dict[str, float], *, c: float,
              max_iter: int, adabn: bool, device: torch.device, name: str,
              cache: bool = False) -> Classifier:
    """A :class:`Classifier` whose head is the logistic regression on frozen features."""
    sets = labelled_sets(data, weights)
    if not sets:
        raise UserError(f"{name} has no labelled images to fit the probe on (source, target "
                        "shots and synthetic are all empty or weighted 0).")
    encoder = encoder.to(device)
    feats = probe_features(encoder, {k: ds.images for k, ds in sets.items()},
                           target_images(data), device, adabn, cache)
    head_w, head_b = fit_logistic_head(
        torch.cat([feats[k] for k in sets]), torch.cat([ds.labels for ds in sets.values()]),
        set_weights(sets, weights), data.target_labelled.num_classes, c=c, max_iter=max_iter)
    model = Classifier(encoder, data.target_labelled.num_classes).to(device)
    with torch.no_grad():
        model.head.weight.copy_(head_w)
        model.head.bias.copy_(head_b)
    return model


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
            task.advance(budget.steps)
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
    """

    name = "lp-ft"
    uses = frozenset({"source", "target_labelled", "target_unlabelled", "synthetic"})

    def __init__(self, lr: float = 3e-4, encoder_lr_scale: float = 1.0, batch_size: int = 64,
                 c: float = 1.0, max_iter: int = 1000, source_weight: float = 1.0,
                 target_weight: float = 1.0, synthetic_weight: float = 0.5,
                 adabn: bool = True, feature_cache: bool = True, seed: int = 0) -> None:
        super().__init__(lr=lr, encoder_lr_scale=encoder_lr_scale, batch_size=batch_size,
                         weights={"source": source_weight, "target": target_weight,
                                  "synthetic": synthetic_weight}, adabn=adabn, seed=seed,
                         probe_init=True, probe_c=c, probe_max_iter=max_iter,
                         feature_cache=feature_cache)
