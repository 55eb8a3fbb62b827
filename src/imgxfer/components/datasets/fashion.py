"""`fashion-mnist`: Zalando's Fashion-MNIST read from its idx files (plain or gzipped).

Offline the files come from the Debian package ``dataset-fashion-mnist``, which puts them
in ``/usr/share/datasets/fashion-mnist/``; online, missing files are downloaded once with
``torchvision.datasets.FashionMNIST`` into imgxfer's cache folder.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from imgxfer.core.errors import UserError, one_line
from imgxfer.data.common import (
    cache_dir,
    check_choice,
    check_size,
    download_timeout,
    per_class_subsample,
    resize_square,
)
from imgxfer.data.dataset import ImageDataset

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
DEFAULT_PATH = "/usr/share/datasets/fashion-mnist/"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
_PREFIX = {"train": "train", "test": "t10k"}
# idx magic: two zero bytes, a type code (0x08: unsigned byte), the number of dimensions.
_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped when its name ends in .gz) as a numpy array,
    after checking its magic number and that its size matches its header."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read idx file {str(path)!r}: {one_line(exc)}.") from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        raise UserError(f"{str(path)!r} is not an idx file of bytes with {ndim} "
                        f"dimension{'s' if ndim > 1 else ''} (wrong magic number); it may be "
                        "corrupt or not a Fashion-MNIST file.")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(f"idx file {str(path)!r} holds {len(raw) - header} bytes of data but its "
                        f"header announces {'x'.join(map(str, shape))} = {expected}; it is "
                        "truncated or corrupt.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of ``split`` in ``folder``, or None when neither is
    there; one without the other is an error."""
    images = _find(folder, f"{_PREFIX[split]}-images-idx3-ubyte")
    labels = _find(folder, f"{_PREFIX[split]}-labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        present, missing = (images, "labels") if images else (labels, "images")
        raise UserError(f"found {str(present)!r} but not the matching {missing} file "
                        f"{_PREFIX[split]}-{missing}-idx{3 if missing == 'images' else 1}"
                        f"-ubyte(.gz) in {str(folder)!r}.")
    return images, labels


def _download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    with download_timeout():
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)


def _search(folders: list[Path], splits: list[str]) -> list[tuple[Path, Path]] | None:
    for folder in folders:
        found = [_split_files(folder, s) for s in splits]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _locate(path: Path, splits: list[str], download: bool) -> list[tuple[Path, Path]]:
    root = cache_dir() / "torchvision"
    # The given folder, torchvision's layout below it, then imgxfer's download cache.
    folders = [path, path / "FashionMNIST" / "raw", root / "FashionMNIST" / "raw"]
    found = _search(folders, splits)
    if found:
        return found
    if not download:
        reason = "downloading is off (download=false)"
    else:
        try:
            _download(root)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            reason = f"downloading them failed ({one_line(exc)})"
        else:
            found = _search(folders, splits)
            if found:
                return found
            reason = "the download left no files"
    names = ", ".join(f"{_PREFIX[s]}-{kind}-idx{n}-ubyte.gz" for s in splits
                      for kind, n in (("images", 3), ("labels", 1)))
    raise UserError(f"Fashion-MNIST files ({names}) were not found in {str(path)!r} or "
                    f"{str(folders[-1])!r} and {reason}; install the Debian package "
                    f"{DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}), which puts them in "
                    f"{DEFAULT_PATH}, or copy them into {str(path)!r}.")


def fashion_mnist(*, path: str = DEFAULT_PATH, split: str = "train", n_per_class: int = 500,
                  size: int = 32, seed: int = 0, download: bool = True) -> ImageDataset:
    """Fashion-MNIST clothing photos (10 classes, 28x28 greyscale) from idx files.

    ``path`` is the folder with the idx files (``train-images-idx3-ubyte.gz`` etc., gzipped
    or not; default: where the Debian package ``dataset-fashion-mnist`` installs them).
    ``split`` is ``train`` (60,000), ``test`` (10,000) or ``all``; ``n_per_class`` keeps a
    seeded random subset of that many images per class (0: all). Images are resized from
    28 to ``size``. Missing files are downloaded with torchvision into the imgxfer cache
    unless ``download=false``.
    """
    what = "dataset 'fashion-mnist'"
    check_choice(what, "split", split, ["train", "test", "all"])
    check_size(what, size)
    splits = ["train", "test"] if split == "all" else [split]
    images, labels = [], []
    for image_file, label_file in _locate(Path(path).expanduser(), splits, download):
        x, y = read_idx(image_file, 3), read_idx(label_file, 1)
        if len(x) != len(y):
            raise UserError(f"{str(image_file)!r} holds {len(x)} images but {str(label_file)!r} "
                            f"holds {len(y)} labels; the files do not belong together.")
        if len(y) and y.max() >= len(FASHION_NAMES):
            raise UserError(f"{str(label_file)!r} has label {int(y.max())}; Fashion-MNIST "
                            "labels are 0 to 9, so the file is corrupt or another dataset's.")
        images.append(x)
        labels.append(y.astype(np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    keep, notes = per_class_subsample(y, n_per_class, seed, what="fashion-mnist",
                                      class_names=FASHION_NAMES)
    tensor = torch.from_numpy(x[keep].astype(np.float32) / 255.0)[:, None]
    return ImageDataset(resize_square(tensor, size), torch.from_numpy(y[keep]),
                        list(FASHION_NAMES), "fashion-mnist",
                        description="product photo of a", notes=notes)
