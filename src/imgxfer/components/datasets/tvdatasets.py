"""`torchvision:NAME`: a dataset class of ``torchvision.datasets`` (downloaded once into a
cache folder) converted to an :class:`ImageDataset`.

Online, the first use downloads the files; offline, the files must already be in ``root``
in the layout torchvision expects, and a failed download is one clear error that says
which folder to fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.core.errors import UserError, one_line
from imgxfer.data.common import (
    cache_dir,
    check_choice,
    check_size,
    compact_classes,
    download_timeout,
    per_class_subsample,
    resize_square,
)
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.files import DEFAULT_SIZE
from imgxfer.data.images import TensorImages
from imgxfer.data.layout import GLYPH, glyph_box

EMNIST_VARIANTS = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")


@dataclass(frozen=True)
class Spec:
    """How one torchvision dataset class is built and converted."""

    cls: str
    description: str
    # Keyword that selects the split: "train" (True/False) or "split" ("train"/"test").
    split_kw: str = "train"
    # "NHW" (greyscale), "NHWC" or "NCHW": the layout of the dataset's ``data``.
    layout: str = "NHW"
    # Digits get the shared digit names (aligning with mnist, digits, syndigits) and,
    # for handwriting, the MNIST box layout of imgxfer.data.layout.
    digits: bool = False
    glyph: bool = False
    # Where the files go below ``root`` (and which, when the folder does not say), for
    # the offline message.
    files_in: str = "."
    file_names: str = ""


SPECS = {
    "MNIST": Spec("MNIST", "handwritten digit", digits=True, glyph=True, files_in="MNIST/raw"),
    "FashionMNIST": Spec("FashionMNIST", "product photo of a", files_in="FashionMNIST/raw"),
    "KMNIST": Spec("KMNIST", "handwritten Japanese character", glyph=True,
                   files_in="KMNIST/raw"),
    "QMNIST": Spec("QMNIST", "handwritten digit", digits=True, glyph=True,
                   files_in="QMNIST/raw"),
    "EMNIST": Spec("EMNIST", "handwritten character", glyph=True, files_in="EMNIST/raw"),
    "USPS": Spec("USPS", "handwritten digit", digits=True, glyph=True,
                 file_names="usps.bz2, usps.t.bz2"),
    "SVHN": Spec("SVHN", "house-number photo of the digit", split_kw="split", layout="NCHW",
                 digits=True, file_names="train_32x32.mat, test_32x32.mat"),
    "CIFAR10": Spec("CIFAR10", "photo of a", layout="NHWC", files_in="cifar-10-batches-py"),
    "CIFAR100": Spec("CIFAR100", "photo of a", layout="NHWC", files_in="cifar-100-python"),
    "STL10": Spec("STL10", "photo of a", split_kw="split", layout="NCHW",
                  files_in="stl10_binary"),
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_spec(name: str) -> Spec:
    """Case, '-' and '_' do not matter: ``cifar-10`` and ``fashion_mnist`` are found."""
    by_key = {_key(k): spec for k, spec in SPECS.items()}
    if _key(name) not in by_key:
        raise UserError(f"unknown torchvision dataset {name!r}; supported: "
                        f"{', '.join(SPECS)}.")
    return by_key[_key(name)]


def _build(spec: Spec, root: Path, split: str, variant: str, download: bool) -> Any:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls)
    kwargs: dict[str, Any] = {"download": download}
    kwargs[spec.split_kw] = (split == "train") if spec.split_kw == "train" else split
    if spec.cls == "EMNIST":
        kwargs["split"] = variant
    root.mkdir(parents=True, exist_ok=True)
    with download_timeout():
        return cls(str(root), **kwargs)


def _arrays(spec: Spec, ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, C, H, W] and labels [N] from a torchvision dataset object."""
    data = np.asarray(ds.data)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = ds.labels
    labels = np.asarray(targets).astype(np.int64)
    if labels.ndim == 2:  # QMNIST keeps extra columns; the class is the first
        labels = labels[:, 0]
    if spec.layout == "NHW":
        data = data[:, None]
    elif spec.layout == "NHWC":
        data = data.transpose(0, 3, 1, 2)
    if spec.cls == "EMNIST":  # stored transposed, unlike MNIST
        data = data.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(data), labels


def _class_names(spec: Spec, ds: Any, variant: str) -> list[str]:
    if spec.digits or (spec.cls == "EMNIST" and variant in ("digits", "mnist")):
        return list(DIGIT_NAMES)
    return [str(c) for c in ds.classes]


def torchvision_dataset(name: str, *, split: str = "train", root: str = "",
                        n_per_class: int = 500, size: int = 0, seed: int = 0,
                        variant: str = "balanced", download: bool = True) -> ImageDataset:
    """A torchvision dataset by class name (MNIST, CIFAR10, SVHN...), downloaded once.

    ``root`` is the folder for its files (default: ~/.cache/imgxfer/torchvision, or
    $IMGXFER_CACHE/torchvision); ``split`` is ``train`` or ``test``; ``n_per_class``
    keeps a seeded random subset of that many images per class (0: all); images are
    kept as their 8-bit originals and resized to ``size`` when read (0: the run's encoder
    input size, 32 outside a run; handwriting datasets are fitted into the MNIST digit
    box, like ``mnist``); ``variant`` picks EMNIST's split (balanced, byclass, bymerge, digits,
    letters, mnist); ``download=false`` only reads files already in ``root``. Digit
    datasets (MNIST, QMNIST, USPS, SVHN, EMNIST digits) use the class names of ``digits``.
    """
    spec = find_spec(name)
    what = f"dataset 'torchvision:{name}'"
    check_choice(what, "split", split, ["train", "test"])
    if size != 0:  # 0: as the encoder asks
        check_size(what, size)
    if spec.cls == "EMNIST":
        check_choice(what, "variant", variant, EMNIST_VARIANTS)
    folder = Path(root).expanduser() if root else cache_dir() / "torchvision"
    try:
        ds = _build(spec, folder, split, variant, download)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        # URLError and timeouts are OSErrors; torchvision raises RuntimeError for a failed
        # download and for missing or corrupt files.
        how = "could not be downloaded" if download else "is not in the folder (download=false)"
        names = f" ({spec.file_names})" if spec.file_names else ""
        raise UserError(
            f"torchvision dataset {spec.cls} {how}: {one_line(exc)}; without a network "
            f"connection put its files{names} in {str(folder / spec.files_in)!r} as "
            f"torchvision.datasets.{spec.cls} expects them (or pass root=FOLDER)."
        ) from None
    data, labels = _arrays(spec, ds)
    labels, class_names = compact_classes(labels, _class_names(spec, ds, variant))
    keep, notes = per_class_subsample(labels, n_per_class, seed, what=f"torchvision:{name}",
                                      class_names=class_names)
    # uint8 originals, a quarter of float32's memory; laid out or resized per batch.
    images = TensorImages(torch.from_numpy(np.ascontiguousarray(data[keep])),
                          size=size or DEFAULT_SIZE, sized_by_run=size == 0,
                          resize=glyph_box if spec.glyph else resize_square)
    domain, description = spec.cls, spec.description
    if spec.cls == "EMNIST":
        domain = f"EMNIST-{variant}"
        description = "handwritten digit" if class_names == DIGIT_NAMES else description
    return ImageDataset(images, torch.from_numpy(labels[keep]), class_names, domain,
                        description=description, notes=notes,
                        layout=GLYPH if spec.glyph else "")
