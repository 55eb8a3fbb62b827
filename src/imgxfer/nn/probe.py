"""The linear probe on frozen encoder features: the `linear` adapter, LP-FT's head
initialisation and the synthetic-image filter all fit it, so it lives in the core (the
adapters build on it; the core imports no adapter)."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset, TransferData
from imgxfer.data.features import encode
from imgxfer.data.images import ConcatImages, ImageStore
from imgxfer.nn.classifier import Classifier
from imgxfer.nn.training import Preprocess, adapt_batchnorm


def labelled_sets(data: TransferData, weights: dict[str, float]) -> dict[str, ImageDataset]:
    """The labelled sets an adapter trains on: non-empty and with a weight above 0."""
    sets = {"source": data.source, "target": data.target_labelled, "synthetic": data.synthetic}
    return {k: v for k, v in sets.items()
            if v is not None and len(v) and weights.get(k, 0) > 0}


def target_images(data: TransferData) -> ImageStore:
    """Every target training image, labelled shots and unlabelled alike (never the test split)."""
    return ConcatImages([data.target_labelled.images, data.target_unlabelled.images])


def set_weights(sets: dict[str, ImageDataset], weights: dict[str, float]) -> torch.Tensor:
    """Per-image weights that give every set its weight in total, whatever its size, and
    average 1 over all images (so a regularisation strength keeps its usual meaning)."""
    w = torch.cat([torch.full((len(ds),), weights[k] / len(ds)) for k, ds in sets.items()])
    return w * len(w) / w.sum()


def probe_features(encoder: nn.Module, images: dict[str, ImageStore], target: ImageStore,
                   device: torch.device, adabn: bool,
                   cache: bool = False) -> dict[str, torch.Tensor]:
    """Features of each set of raw images with the frozen encoder. With ``adabn`` each set
    is encoded with BatchNorm statistics re-estimated on that set ("target" on all target
    images ``target``), and the encoder is left with target statistics when there are
    target images; otherwise the encoder's own statistics serve every set. ``cache``
    reads and writes the on-disk feature cache (:mod:`imgxfer.data.features`); the statistics
    are part of its key, so each set's entry is found again by the next probe of the same
    encoder on the same images (``--compare linear,lp-ft``, another seed of a frozen
    pretrained encoder...)."""
    feats: dict[str, torch.Tensor] = {}
    order = sorted(images, key=lambda k: k == "target")  # target last: its statistics stay
    for key in order:
        if adabn:
            own = target if key == "target" else images[key]
            adapt_batchnorm(encoder, own, device, preprocess=cast(Preprocess, encoder.preprocess))
        feats[key] = encode(encoder, images[key], device, cache=cache)
    if adabn and "target" not in images and len(target):
        adapt_batchnorm(encoder, target, device, preprocess=cast(Preprocess, encoder.preprocess))
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
