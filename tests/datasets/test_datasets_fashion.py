"""`fashion-mnist`: idx files (gzipped or not) parsed with numpy, validated, subsampled;
missing files lead to a download attempt and, offline, to one clear sentence."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets

from imgxfer.components.datasets import fashion
from imgxfer.components.datasets.fashion import FASHION_NAMES, fashion_mnist, read_idx
from imgxfer.core.errors import UserError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, n_per_class: int, *, gz: bool, seed: int = 0,
                offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel is 10 * label + offset, so content tells the label."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), n_per_class)).astype(np.uint8)
    images = np.repeat((labels * 10 + offset)[:, None, None], 28, 1).repeat(28, 2)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        data = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Downloads go to a private cache and fail as they do offline."""
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "cache"))

    def offline(root, train=True, download=False, **_):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Tried "
                           "https://example.invalid, got: <urlopen error [Errno -3] "
                           "Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)


def test_reads_gzipped_and_plain_idx_files(tmp_path):
    write_split(tmp_path / "fm", "train", 6, gz=True)
    write_split(tmp_path / "fm", "t10k", 2, gz=False, offset=3)
    train = fashion_mnist(path=str(tmp_path / "fm"), n_per_class=0, size=28)
    assert train.images.shape == (60, 1, 28, 28)
    assert train.class_names == FASHION_NAMES and train.domain == "fashion-mnist"
    assert train.class_counts() == [6] * 10
    # Pixel values are byte / 255 and belong to their label.
    expected = (train.labels.float() * 10 / 255)[:, None, None, None].expand_as(train.images[:])
    assert torch.allclose(train.images[:], expected)
    test = fashion_mnist(path=str(tmp_path / "fm"), split="test", n_per_class=0, size=28)
    assert test.class_counts() == [2] * 10
    assert torch.allclose(test.images[:][:, 0, 0, 0], (test.labels * 10 + 3).float() / 255)
    both = fashion_mnist(path=str(tmp_path / "fm"), split="all", n_per_class=0)
    assert both.images.shape == (80, 1, 32, 32) and both.class_counts() == [8] * 10
    assert 0 <= both.images[:].min() and both.images[:].max() <= 1


def test_subsample_is_balanced_seeded_and_notes_short_classes(tmp_path):
    write_split(tmp_path, "train", 6, gz=False)
    a = fashion_mnist(path=str(tmp_path), n_per_class=4, seed=0)
    assert a.class_counts() == [4] * 10 and a.notes == []
    assert torch.equal(a.labels, fashion_mnist(path=str(tmp_path), n_per_class=4, seed=0).labels)
    assert not torch.equal(a.images[:], fashion_mnist(path=str(tmp_path), n_per_class=4, seed=5).images[:])
    more = fashion_mnist(path=str(tmp_path), n_per_class=500)
    assert len(more) == 60 and "fewer than n_per_class=500" in more.notes[0]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x00\x00\x08\x01" + b[4:], r"wrong magic number"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], r"not an idx file of bytes .*wrong magic number"),
    (lambda b: b[:-100], r"holds 2252 bytes of data but its header announces 3x28x28 = 2352; "
                         r"it is truncated or corrupt"),
    (lambda b: b"", r"wrong magic number"),
])
def test_corrupt_idx_files_are_user_errors(tmp_path, damage, message):
    write_split(tmp_path, "train", 0, gz=False)  # labels file, 0 images
    images = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(damage(idx_bytes(images)))
    with pytest.raises(UserError, match=message):
        read_idx(tmp_path / "train-images-idx3-ubyte", 3)
    with pytest.raises(UserError, match=message):
        fashion_mnist(path=str(tmp_path))


def test_broken_gzip_and_mismatched_files(tmp_path):
    write_split(tmp_path, "train", 2, gz=True)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(UserError, match=r"cannot read idx file .*train-images-idx3-ubyte\.gz"):
        fashion_mnist(path=str(tmp_path))
    write_split(tmp_path, "train", 2, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(7, np.uint8))))
    with pytest.raises(UserError, match=r"holds 20 images but .* holds 7 labels"):
        fashion_mnist(path=str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(20, 12, np.uint8))))
    with pytest.raises(UserError, match=r"has label 12; Fashion-MNIST labels are 0 to 9"):
        fashion_mnist(path=str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"but not the matching labels file "
                                        r"train-labels-idx1-ubyte\(\.gz\)"):
        fashion_mnist(path=str(tmp_path))


def test_missing_files_offline_name_the_debian_package_and_folder(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        fashion_mnist(path=str(where))
    text = str(info.value)
    assert f"were not found in {str(where)!r}" in text
    assert "downloading them failed (Error downloading train-images-idx3-ubyte.gz" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "/usr/share/datasets/fashion-mnist/" in text and "\n" not in text
    with pytest.raises(UserError, match=r"downloading is off \(download=false\)"):
        fashion_mnist(path=str(where), download=False)


def test_url_errors_are_caught_too(tmp_path, monkeypatch):
    def offline(root, train=True, download=False, **_):
        raise URLError("[Errno 101] Network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(UserError, match=r"Network is unreachable.*dataset-fashion-mnist"):
        fashion_mnist(path=str(tmp_path / "nowhere"))


def test_download_lands_in_the_cache_and_is_used(tmp_path, monkeypatch):
    calls = []

    def online(root, train=True, download=False, **_):
        calls.append((root, train, download))
        raw = Path(root) / "FashionMNIST" / "raw"
        write_split(raw, "train" if train else "t10k", 3, gz=False)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", online)
    ds = fashion_mnist(path=str(tmp_path / "nowhere"), split="all", n_per_class=0)
    assert len(ds) == 60
    assert calls == [(str(tmp_path / "cache" / "torchvision"), True, True),
                     (str(tmp_path / "cache" / "torchvision"), False, True)]
    calls.clear()
    assert len(fashion_mnist(path=str(tmp_path / "nowhere"), n_per_class=0)) == 30
    assert calls == []  # found in the cache, no second download


def test_options_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"split must be one of 'train', 'test', 'all', got 'val'"):
        fashion_mnist(path=str(tmp_path), split="val")


@pytest.mark.skipif(not Path(fashion.DEFAULT_PATH, "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_debian_package_files():
    test = fashion_mnist(split="test", n_per_class=30)
    assert test.images.shape == (300, 1, 32, 32) and test.class_counts() == [30] * 10
    assert 0 <= test.images[:].min() and 0.95 < test.images[:].max() <= 1
    # Trousers are tall and narrow, bags wide: the classes are what the names say.
    trouser = test.images[:][test.labels == FASHION_NAMES.index("Trouser")].mean(0)[0]
    bag = test.images[:][test.labels == FASHION_NAMES.index("Bag")].mean(0)[0]
    assert trouser[:, 12:20].mean() > 2 * trouser[:, :6].mean()
    assert bag[20:26].mean() > trouser[20:26].mean()
