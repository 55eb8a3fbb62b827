"""The unsupervised validation score: what it rewards and what it cannot see."""

from __future__ import annotations

import pytest
import torch

from imgxfer.tasks.classify.evaluation import information_maximization


def test_im_rewards_confident_and_balanced_predictions():
    confident_balanced = torch.eye(4).repeat(5, 1) * 20  # every class, sure of each
    undecided = torch.zeros(20, 4)                       # uniform predictions
    collapsed = torch.zeros(20, 4)
    collapsed[:, 0] = 20                                 # one class for every image
    best = information_maximization(confident_balanced)
    assert best["im"] == pytest.approx(1, abs=1e-4)
    assert best["marginal_entropy"] == pytest.approx(1) and best["mean_entropy"] < 1e-4
    assert information_maximization(undecided)["im"] == pytest.approx(0, abs=1e-6)
    assert information_maximization(collapsed)["im"] == pytest.approx(0, abs=1e-4)
    # In between: balanced but less confident scores lower than confident.
    assert 0 < information_maximization(confident_balanced / 10)["im"] < best["im"]
    # Never below 0: the mean prediction is at least as uncertain as the average one.
    noisy = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3
    assert 0 <= information_maximization(noisy)["im"] <= 1


def test_im_needs_images_and_two_classes():
    with pytest.raises(ValueError):
        information_maximization(torch.zeros(0, 3))
    with pytest.raises(ValueError):
        information_maximization(torch.zeros(5, 1))
