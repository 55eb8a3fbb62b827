"""imgxfer.data.features.encode: the same features as a plain forward, the encoder left as it
was, and the opt-in on-disk cache (hits, keys, corrupt files, folders)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.data import features as F
from imgxfer.data.features import encode, feature_cache_key

CPU = torch.device("cpu")


@pytest.fixture
def encoder() -> SmallCNN:
    return SmallCNN(width=4, input_size=16, in_channels=1, seed=3)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(10, 1, 20, 20, generator=torch.Generator().manual_seed(0))


def plain(encoder: SmallCNN, images: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(encoder.preprocess(images))


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def test_encode_matches_a_plain_forward_and_restores_the_encoder(encoder: SmallCNN,
                                                                 images: torch.Tensor) -> None:
    encoder.train()
    params = {n: (p.data_ptr(), p.stride()) for n, p in encoder.named_parameters()}
    out = encode(encoder, images, CPU, batch_size=3)  # 4 batches, the last one short
    assert out.shape == (10, encoder.feature_dim) and out.dtype == torch.float32
    assert encoder.training  # mode restored
    # channels-last weights were temporary: the very same tensors are back.
    assert params == {n: (p.data_ptr(), p.stride()) for n, p in encoder.named_parameters()}
    assert torch.allclose(out, plain(encoder, images), atol=1e-5)
    assert not out.is_inference()  # usable as input to a trained head
    assert encode(encoder, images[:0], CPU).shape == (0, encoder.feature_dim)


def test_cache_hit_returns_identical_features_without_encoding(
        encoder: SmallCNN, images: torch.Tensor, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = encode(encoder, images, CPU, cache=tmp_path)
    files = cache_files(tmp_path)
    assert len(files) == 1
    assert files[0].stem == feature_cache_key(encoder, images, CPU)
    assert torch.equal(load_file(str(files[0]))["features"], first)

    def no_encoding(*args: object) -> None:
        raise AssertionError("a cache hit must not run the encoder")

    monkeypatch.setattr(F, "_encode", no_encoding)
    again = encode(encoder, images.clone(), CPU, cache=tmp_path)
    assert torch.equal(again, first)
    assert not again.is_inference()


def test_cache_true_uses_the_environment_folder(encoder: SmallCNN, images: torch.Tensor,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "env"))
    assert F.default_cache_dir() == tmp_path / "env" / "features"
    encode(encoder, images, CPU, cache=True)
    assert len(cache_files(tmp_path / "env" / "features")) == 1
    monkeypatch.delenv("IMGXFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert F.default_cache_dir() == tmp_path / "xdg" / "imgxfer" / "features"
    assert F.cache_dir_for(False) is None and F.cache_dir_for(None) is None
    encode(encoder, images, CPU)  # cache off by default: nothing written
    assert not (tmp_path / "xdg").exists()


def test_key_changes_with_weights_images_and_preprocessing(encoder: SmallCNN,
                                                           images: torch.Tensor) -> None:
    key = feature_cache_key(encoder, images, CPU)
    # Equal content gives an equal key: a copy of the encoder, a clone of the images.
    assert feature_cache_key(copy.deepcopy(encoder), images.clone(), CPU) == key

    weights = copy.deepcopy(encoder)
    with torch.no_grad():
        weights.features[0][0].weight[0, 0, 0, 0] += 1e-3
    bn = copy.deepcopy(encoder)  # BatchNorm statistics only (what AdaBN changes)
    bn.features[0][1].running_mean[0] += 1e-3
    pixels = images.clone()
    pixels[3, 0, 5, 5] = 1 - pixels[3, 0, 5, 5]
    size = SmallCNN(width=4, input_size=24, in_channels=1, seed=3)  # same weights, other size
    size.load_state_dict(encoder.state_dict())
    norm = copy.deepcopy(encoder)  # same everything except the normalisation
    norm.preprocess = lambda x: prepare_with_mean(x, norm, mean=0.4)  # type: ignore[method-assign]
    keys = {
        "weights": feature_cache_key(weights, images, CPU),
        "bn": feature_cache_key(bn, images, CPU),
        "images": feature_cache_key(encoder, pixels, CPU),
        "dtype": feature_cache_key(encoder, images.double(), CPU),
        "input_size": feature_cache_key(size, images, CPU),
        "normalisation": feature_cache_key(norm, images, CPU),
        "device": feature_cache_key(encoder, images, torch.device("meta")),
    }
    assert key not in keys.values()
    assert len(set(keys.values())) == len(keys)


def prepare_with_mean(x: torch.Tensor, encoder: SmallCNN, mean: float) -> torch.Tensor:
    from imgxfer.nn.preprocess import prepare

    return prepare(x, channels=1, size=encoder.input_size, mean=[mean], std=[0.5])


def test_key_does_not_depend_on_threads(encoder: SmallCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    big = torch.rand(4, 1, 64, 64)
    monkeypatch.setattr(F, "_CHUNK", 1000)  # many chunks, hashed on a pool when threads > 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    serial = feature_cache_key(encoder, big, CPU)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert feature_cache_key(encoder, big, CPU) == serial
    changed = big.clone()
    changed[-1, 0, -1, -1] += 1  # in the last chunk
    assert feature_cache_key(encoder, changed, CPU) != serial


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape", "empty"])
def test_corrupt_cache_file_is_ignored_and_rewritten(encoder: SmallCNN, images: torch.Tensor,
                                                     tmp_path: Path, damage: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    expected = encode(encoder, images, CPU, cache=tmp_path)
    (path,) = cache_files(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot safetensors at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "wrong shape":
        save_file({"features": torch.zeros(3, 2)}, str(path))
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="imgxfer.data.features"):
        again = encode(encoder, images, CPU, cache=tmp_path)
    assert torch.allclose(again, expected, atol=1e-6)
    assert "ignoring unreadable feature cache file" in caplog.text and path.name in caplog.text
    assert torch.equal(load_file(str(path))["features"], again)  # rewritten, readable
    assert cache_files(tmp_path) == [path] and not list(tmp_path.glob(".*.tmp"))


def test_unwritable_cache_folder_only_costs_the_saving(encoder: SmallCNN, images: torch.Tensor,
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="imgxfer.data.features"):
        out = encode(encoder, images, CPU, cache=blocker / "features")
    assert torch.allclose(out, plain(encoder, images), atol=1e-5)
    assert "could not write feature cache file" in caplog.text


def test_cache_keeps_under_its_limit_removing_least_recently_used(
        encoder: SmallCNN, images: torch.Tensor, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    other = tmp_path / "notes.txt"  # not a cache file: never counted or removed
    other.write_text("mine")
    sets = [images, images.flip(2), images.flip(3)]
    encode(encoder, sets[0], CPU, cache=tmp_path)
    one = cache_files(tmp_path)[0].stat().st_size
    for i, path in enumerate(cache_files(tmp_path)):
        os.utime(path, (1000 + i, 1000 + i))
    # Room for two files: the third write removes the least recently used one.
    monkeypatch.setenv("IMGXFER_CACHE_MAX_MB", str(2.5 * one / 2**20))
    encode(encoder, sets[1], CPU, cache=tmp_path)
    first = tmp_path / f"{feature_cache_key(encoder, sets[0], CPU)}.safetensors"
    second = tmp_path / f"{feature_cache_key(encoder, sets[1], CPU)}.safetensors"
    os.utime(first, (2000, 2000))
    os.utime(second, (1500, 1500))
    encode(encoder, sets[0], CPU, cache=tmp_path)  # a hit: first becomes the newest
    encode(encoder, sets[2], CPU, cache=tmp_path)
    assert first.exists() and not second.exists() and len(cache_files(tmp_path)) == 2
    assert other.read_text() == "mine"

    monkeypatch.setenv("IMGXFER_CACHE_MAX_MB", "0")  # keeps nothing
    encode(encoder, sets[1], CPU, cache=tmp_path)
    assert cache_files(tmp_path) == [] and other.exists()


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_bad_cache_limit_is_one_sentence(encoder: SmallCNN, images: torch.Tensor,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         value: str) -> None:
    from imgxfer.core.errors import UserError

    monkeypatch.setenv("IMGXFER_CACHE_MAX_MB", value)
    with pytest.raises(UserError, match="IMGXFER_CACHE_MAX_MB must be a size in megabytes"):
        encode(encoder, images, CPU, cache=tmp_path)
    assert cache_files(tmp_path) == []
