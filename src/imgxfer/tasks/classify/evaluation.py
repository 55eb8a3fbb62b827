"""Classification metrics on the held-out target split, computed with scikit-learn, and
an unsupervised validation score that needs no target labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy (with its 95% Wilson interval), macro precision/recall/F1, per-class
    figures and the confusion matrix."""
    from imgxfer.run.uncertainty import wilson_interval

    labels = np.arange(len(class_names))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_p, per_r, per_f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0)
    accuracy = float(accuracy_score(y_true, y_pred))
    return {
        "accuracy": accuracy,
        "accuracy_interval": wilson_interval(accuracy, len(y_true)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "chance": float(1 / len(class_names)),
        "n_test": int(len(y_true)),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for name, p, r, f, s in zip(class_names, per_p, per_r, per_f, support, strict=True)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def information_maximization(logits: torch.Tensor) -> dict[str, float]:
    """The information-maximisation (IM) score of predictions on unlabelled target images:
    the entropy of the mean prediction (high when every class is predicted about as often)
    minus the mean entropy of each prediction (low when each one is confident), both
    divided by log(classes). The first is never below the second (entropy is concave), so
    IM lies in [0, 1]; higher is better.

    It needs no labels, so it can compare adapters on a target without test labels
    (Shi & Sha 2012; Musgrave et al. 2022 benchmark it as a domain-adaptation validator).
    It rewards confidence, so it favours methods that minimise entropy (self-training)
    and cannot see a confidently wrong classifier; docs/benchmarks.md measures how often
    it picks the most accurate adapter."""
    classes = logits.shape[1]
    if len(logits) == 0 or classes < 2:
        raise ValueError("information_maximization needs images and at least two classes")
    p = logits.float().softmax(1)
    log_p = logits.float().log_softmax(1)
    per_image = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0)
    marginal = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
    norm = float(np.log(classes))
    return {"im": float(marginal - per_image) / norm,
            "marginal_entropy": float(marginal) / norm,
            "mean_entropy": float(per_image) / norm}
