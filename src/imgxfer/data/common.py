"""Helpers the dataset factories share: option checks, seeded per-class subsampling,
resizing, the download cache folder and a time limit for downloads."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgxfer.core.errors import UserError

# How long one network operation of a download may stall before it counts as offline.
DOWNLOAD_TIMEOUT_S = 30.0


def cache_dir() -> Path:
    """Where imgxfer keeps downloads: ``$IMGXFER_CACHE``, else ``$XDG_CACHE_HOME/imgxfer``,
    else ``~/.cache/imgxfer``."""
    if os.environ.get("IMGXFER_CACHE"):
        return Path(os.environ["IMGXFER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "imgxfer"


def check_size(what: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 1024:
        raise UserError(f"{what}: option size must be a whole number of pixels between 4 and "
                        f"1024, got {size!r}.")


def check_choice(what: str, option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"{what}: option {option} must be one of "
                        f"{', '.join(map(repr, choices))}, got {value!r}.")


def check_n_per_class(what: str, n_per_class: int) -> None:
    if n_per_class < 0:
        raise UserError(f"{what}: option n_per_class must be 0 (all) or more, got {n_per_class}.")


def per_class_subsample(labels: np.ndarray, n_per_class: int, seed: int, *, what: str,
                        class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Indices of at most ``n_per_class`` items of each class, picked with ``seed``, in
    ascending order; ``n_per_class=0`` keeps everything. Also returns notes naming the
    classes that had fewer items than asked for (they are kept whole)."""
    check_n_per_class(what, n_per_class)
    if n_per_class == 0:
        return np.arange(len(labels)), []
    rng = np.random.default_rng(seed)
    keep, short = [], []
    for c in range(len(class_names)):
        index = np.flatnonzero(labels == c)
        if len(index) < n_per_class:
            short.append(f"{class_names[c]} ({len(index)})")
        keep.append(rng.permutation(index)[:n_per_class])
    notes = []
    if short:
        notes.append(f"{what}: fewer than n_per_class={n_per_class} images in "
                     f"{', '.join(short)}; those classes are used whole.")
    return np.sort(np.concatenate(keep)), notes


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N,C,h,w] in [0,1] -> [N,C,size,size] (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def compact_classes(labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Drop classes without any item (EMNIST letters' unused 'N/A') and renumber labels."""
    present = np.unique(labels)
    if len(present) == len(class_names):
        return labels, list(class_names)
    new_index = np.full(len(class_names), -1, dtype=np.int64)
    new_index[present] = np.arange(len(present))
    return new_index[labels], [class_names[i] for i in present]


@contextlib.contextmanager
def download_timeout(seconds: float = DOWNLOAD_TIMEOUT_S) -> Iterator[None]:
    """Give up on a stalled connection after ``seconds`` (torchvision's downloads set no
    timeout of their own, so a machine without network could otherwise hang)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


