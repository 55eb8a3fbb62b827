"""`torchvision:NAME`: torchvision dataset classes converted to ImageDataset; offline, a
failed download is one sentence naming the dataset and the folder for its files. No test
touches the network: dataset classes are replaced, or read files written here."""

from __future__ import annotations

import socket
import string
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.components.datasets.tvdatasets import SPECS, find_spec, torchvision_dataset
from imgxfer.core.errors import UserError
from imgxfer.plugin.registry import Registry


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "cache"))


def fake_class(monkeypatch, name, make):
    """Replace torchvision.datasets.<name> by a class whose instances ``make`` fills."""
    calls = []

    class Fake:
        def __init__(self, root, **kwargs):
            calls.append((root, kwargs))
            make(self, kwargs)
    monkeypatch.setattr(torchvision.datasets, name, Fake)
    return calls


def test_unknown_name_lists_the_supported_ones():
    with pytest.raises(UserError, match=r"^unknown torchvision dataset 'ImageNet'; supported: "
                                        r"MNIST, FashionMNIST, KMNIST, .*CIFAR10, .*STL10\.$"):
        torchvision_dataset("ImageNet")


def test_names_ignore_case_dashes_and_underscores():
    assert find_spec("cifar-10").cls == "CIFAR10"
    assert find_spec("fashion_mnist").cls == "FashionMNIST"
    assert find_spec("svhn").cls == "SVHN"
    assert set(SPECS) <= set(dir(torchvision.datasets))  # every entry exists in torchvision


@pytest.mark.parametrize("error", [
    RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example.invalid/, "
                 "got:\n<urlopen error [Errno -3] Temporary failure in name resolution>"),
    URLError("[Errno 101] Network is unreachable"),
    TimeoutError("timed out"),
])
def test_offline_download_names_dataset_and_folder(monkeypatch, tmp_path, error):
    def fail(self, kwargs):
        raise error
    calls = fake_class(monkeypatch, "MNIST", fail)
    with pytest.raises(UserError) as info:
        torchvision_dataset("mnist", split="test")
    text = str(info.value)
    folder = tmp_path / "cache" / "torchvision"
    assert text.startswith("torchvision dataset MNIST could not be downloaded: ")
    assert f"put its files in {str(folder / 'MNIST' / 'raw')!r}" in text
    assert "\n" not in text and text.endswith("(or pass root=FOLDER).")
    assert calls == [(str(folder), {"download": True, "train": False})]


def test_offline_message_for_datasets_with_named_files(monkeypatch, tmp_path):
    def fail(self, kwargs):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
    calls = fake_class(monkeypatch, "SVHN", fail)
    root = tmp_path / "mine"
    with pytest.raises(UserError, match=r"SVHN is not in the folder \(download=false\): Dataset not "
                                        r"found.*put its files \(train_32x32\.mat, test_32x32\.mat\) "
                                        rf"in '{root}'"):
        torchvision_dataset("SVHN", root=str(root), download=False)
    assert calls[0][1] == {"download": False, "split": "train"}


def test_download_timeout_is_restored(monkeypatch):
    seen = []
    fake_class(monkeypatch, "CIFAR10", lambda self, kw: (seen.append(socket.getdefaulttimeout()),
                                                          1 / 0))
    with pytest.raises(ZeroDivisionError):  # an internal bug still raises
        torchvision_dataset("CIFAR10")
    assert seen == [30.0] and socket.getdefaulttimeout() is None


def test_colour_dataset_conversion_and_subsample(monkeypatch):
    rng = np.random.default_rng(0)

    def cifar(self, kwargs):
        self.data = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)  # NHWC
        self.data[:, :, :, 0] = 255  # red channel full
        self.data[:, :, :, 2] = 0
        self.targets = [i % 4 for i in range(40)]
        self.classes = ["airplane", "bird", "cat", "deer"]
    fake_class(monkeypatch, "CIFAR10", cifar)
    ds = torchvision_dataset("cifar10", n_per_class=3, size=16)
    assert ds.images.shape == (12, 3, 16, 16) and ds.class_counts() == [3] * 4
    assert ds.class_names == ["airplane", "bird", "cat", "deer"]
    assert ds.images[:][:, 0].min() > 0.99 and ds.images[:][:, 2].max() < 0.01
    assert (ds.domain, ds.description) == ("CIFAR10", "photo of a")
    everything = torchvision_dataset("cifar10", n_per_class=0, size=32)
    assert len(everything) == 40 and everything.images.shape[-1] == 32


def test_digit_datasets_use_the_shared_digit_names(monkeypatch):
    def svhn(self, kwargs):
        self.data = np.full((20, 3, 32, 32), 90, dtype=np.uint8)  # NCHW
        self.labels = np.arange(20) % 10
    fake_class(monkeypatch, "SVHN", svhn)
    ds = torchvision_dataset("SVHN", split="test")
    assert ds.class_names == DIGIT_NAMES and ds.images.shape == (20, 3, 32, 32)
    assert torch.allclose(ds.images[:], torch.full_like(ds.images[:], 90 / 255), atol=1e-3)


def test_emnist_letters_are_transposed_and_lose_the_empty_class(monkeypatch):
    def emnist(self, kwargs):
        assert kwargs["split"] == "letters"
        data = torch.zeros(26, 28, 28, dtype=torch.uint8)
        data[:, 4:24, 12:16] = 255  # stored transposed: a vertical bar shows as horizontal
        self.data = data
        self.targets = torch.arange(1, 27)  # label 0 ('N/A') is never used
        self.classes = ["N/A"] + list(string.ascii_lowercase)
    fake_class(monkeypatch, "EMNIST", emnist)
    ds = torchvision_dataset("EMNIST", variant="letters", n_per_class=0)
    assert ds.class_names == list(string.ascii_lowercase) and ds.labels.tolist() == list(range(26))
    assert ds.domain == "EMNIST-letters"
    bar = ds.images[:][0, 0] > 0.5
    assert bar.any(0).sum() > bar.any(1).sum()  # wider than tall once upright
    with pytest.raises(UserError, match=r"variant must be one of 'balanced'"):
        torchvision_dataset("EMNIST", variant="greek")


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def test_real_torchvision_mnist_reads_files_placed_offline(tmp_path):
    """The folder the message names is the one torchvision reads: files put there work."""
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):
            images[i, 4:24, 10 + y % 3: 16 + y % 3] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
    registry = Registry()
    registry.add("datasets", "torchvision:", torchvision_dataset, "builtin")
    ds = registry.build("datasets", "torchvision:MNIST",
                        {"root": str(tmp_path / "tv"), "download": False, "split": "test"})
    assert ds.images.shape == (10, 1, 32, 32) and ds.class_names == DIGIT_NAMES
    assert ds.labels.tolist() == list(range(10))
    # Fitted into the MNIST box: the 20-pixel-tall bar becomes 23 of 32 pixels tall.
    rows = (ds.images[:][0, 0] > 0.1).any(1).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 23
    with pytest.raises(UserError, match="is not in the folder"):
        torchvision_dataset("KMNIST", root=str(tmp_path / "tv"), download=False)


def test_option_checks():
    with pytest.raises(UserError, match=r"split must be one of 'train', 'test'"):
        torchvision_dataset("MNIST", split="all")
    with pytest.raises(UserError, match=r"size must be a whole number of pixels between"):
        torchvision_dataset("MNIST", size=10000)
