"""Encoding images to feature vectors with a (frozen) encoder: batched, in inference mode,
channels-last on CPU, with an opt-in on-disk cache of the features.

The cache (``encode(..., cache=True)`` or ``cache=PATH``) keeps one safetensors file per
(encoder weights, images, preprocessing) triple, named by a SHA-256 hash of all three, so a
re-run on the same data with the same frozen encoder reads its features instead of
computing them. The key covers every tensor of the encoder's state dict (BatchNorm
statistics included, so AdaBN-adapted encoders get their own entries), the image tensor's
fingerprint (:meth:`imgxfer.data.images.ImageStore.fingerprint`: the pixels of images in
memory; path, size and modification time of files), the encoder's class, structure (``repr``) and preprocessing (its attributes and its
output on a probe image), the device type and the torch version. Changing an encoder's
*code* without changing any of these is not detected: clear the cache folder then
(``imgxfer cache --clear``).

The folder is kept under ``$IMGXFER_CACHE_MAX_MB`` megabytes (default 2048): after each
write the least recently used files are removed (a hit marks its file as used). Features
of an encoder trained in a run (smallcnn) only hit when the same run is repeated; those of
a pretrained, frozen encoder hit across adapters, seeds and runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Union, cast

import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
from imgxfer.data.images import ImageStore, as_store

if TYPE_CHECKING:  # the encoder members these functions read besides nn.Module's
    from imgxfer.plugin.protocols import Encoder

log = logging.getLogger("imgxfer.data.features")

CACHE_MAX_ENV = "IMGXFER_CACHE_MAX_MB"
CACHE_MAX_MB = 2048
_ENTRY = re.compile(r"[0-9a-f]{64}\.safetensors")  # what the cache writes: nothing else is removed
CACHE_FORMAT = "imgxfer-features-2"  # bump when the key or the file layout changes
CPU_BATCH = 64  # images per forward on CPU, whatever larger batch_size is asked for
CacheOption = Union[bool, str, "os.PathLike[str]", None]


def default_cache_dir() -> Path:
    """The ``features`` folder of imgxfer's cache folder (``$IMGXFER_CACHE``, else
    ``$XDG_CACHE_HOME/imgxfer``, else ``~/.cache/imgxfer``), where downloads are kept too."""
    from imgxfer.data.common import cache_dir

    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"the cache folder {str(root)!r} is a file; set IMGXFER_CACHE to a "
                        "folder.")
    folder = root / "features"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the feature cache folder {str(folder)!r} is a file; remove it or "
                        "set IMGXFER_CACHE to another folder.")
    return folder


def cache_dir_for(cache: CacheOption) -> Path | None:
    """The folder ``encode`` caches in: ``None`` for ``cache=False`` (the default), the
    default folder for ``cache=True``, otherwise ``cache`` as a path."""
    if cache is None or cache is False:
        return None
    if cache is True:
        try:
            return default_cache_dir()
        except UserError as error:  # a cache must never stop a run: go on without it
            log.warning("feature cache off: %s", error)
            return None
    return Path(cache).expanduser()


def encode(encoder: nn.Module, images: torch.Tensor | ImageStore, device: torch.device | str,
           batch_size: int = 256, *, cache: CacheOption = False) -> torch.Tensor:
    """Features [N, D] (float32, on CPU) for raw [0,1] images [N,C,H,W] (a tensor or an
    image store, read batch by batch); eval mode, batched.

    Preprocessing (channels, size, normalisation) is the encoder's own and runs on
    ``device``. ``batch_size`` images go through each forward (on CPU at most
    :data:`CPU_BATCH`). ``cache``: ``False`` computes every time; ``True`` reads and writes the
    cache in :func:`default_cache_dir`; a path uses that folder. An unreadable cache file
    is ignored (with a warning) and written anew; a cache folder that cannot be written
    only costs the saving.
    """
    device, images = torch.device(device), as_store(images)
    folder = cache_dir_for(cache)
    if folder is None or len(images) == 0:
        return _encode(encoder, images, device, batch_size)
    key = feature_cache_key(encoder, images, device)
    path = folder / f"{key}.safetensors"
    limit = cache_limit_bytes()  # a malformed limit is refused before any work
    features = _read_cache(path, len(images), int(cast("Encoder", encoder).feature_dim))
    if features is None:
        features = _encode(encoder, images, device, batch_size)
        _write_cache(path, features, encoder, images, key)
        prune_cache(folder, limit)
    else:
        try:
            os.utime(path)  # used now: the last file pruning would remove
        except OSError:
            pass
    return features


def cache_limit_bytes() -> int:
    """The cache's size limit from ``$IMGXFER_CACHE_MAX_MB`` (default 2048 MB)."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    if not text:
        return CACHE_MAX_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < float("inf"):  # also NaN
        raise UserError(f"{CACHE_MAX_ENV} must be a size in megabytes (0 or more), got {text!r}.")
    return int(mb * (1 << 20))


def cache_entries(folder: Path) -> list[tuple[Path, int]]:
    """(file, size in bytes) of the cache files in ``folder``, least recently used first;
    other files are ignored, and so are files another process removes meanwhile."""
    try:
        names = [p for p in folder.iterdir() if _ENTRY.fullmatch(p.name)]
    except OSError:  # missing or unreadable folder: nothing cached
        return []
    found = []
    for path in names:
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((st.st_mtime, path, st.st_size))
    return [(path, size) for _, path, size in sorted(found)]


def prune_cache(folder: Path, max_bytes: int,
                failed: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """Remove the least recently used cache files until ``folder`` holds at most
    ``max_bytes`` of them; returns the removed files. A file that cannot be removed is
    warned about, or appended to ``failed`` when given (a caller that says it once)."""
    entries = cache_entries(folder)
    total, removed = sum(size for _, size in entries), []
    for path, size in entries:
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if failed is None:
                log.warning("could not remove feature cache file %s (%s)", path, exc)
            else:
                failed.append((path, exc))
            continue
        total -= size
        removed.append(path)
    return removed


def _encode(encoder: nn.Module, images: ImageStore, device: torch.device,
            batch_size: int) -> torch.Tensor:
    if len(images) == 0:
        return torch.empty(0, int(cast("Encoder", encoder).feature_dim))
    was_training = encoder.training
    encoder.eval()
    # Measured on a 2-core CPU: channels-last inputs and weights make oneDNN's convolutions
    # 1.1-1.5x faster (resnet18, smallcnn, MobileNetV3, EfficientNet; neutral for ConvNeXt).
    # Not measured on GPUs, where fp32 convolutions are left in the default layout.
    channels_last = device.type == "cpu" and any(p.dim() == 4 for p in encoder.parameters())
    # On CPU, forwards of more than 64 images are slower per image when activations
    # outgrow the caches (smallcnn at 32x32, one thread: 920 img/s at 64, 715 at 256) and
    # no faster otherwise (resnet18 at 224: equal from 32 to 256).
    step = max(1, min(batch_size, CPU_BATCH) if device.type == "cpu" else batch_size)
    out = []
    try:
        with _channels_last_weights(encoder, channels_last), torch.inference_mode():
            for batch in images.chunks(step):
                # Move the raw batch first: preprocessing (resizing) then runs on the
                # device, and the small raw images are what crosses the bus.
                x = cast("Encoder", encoder).preprocess(batch.to(device, non_blocking=True))
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    # Outside inference mode: the result is an ordinary tensor (usable in autograd), as
    # features read from the cache are.
    return torch.cat(out)


@contextmanager
def _channels_last_weights(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Temporarily give 4-D parameters the channels-last layout; the original tensors are
    put back afterwards, so the caller's module is left exactly as it was."""
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        if enabled:
            for p in module.parameters():
                if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                    swapped.append((p, p.data))
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for p, data in swapped:
            p.data = data


def feature_cache_key(encoder: nn.Module, images: torch.Tensor | ImageStore,
                      device: torch.device | str) -> str:
    """Hex SHA-256 key of everything the features depend on (see the module docstring)."""
    parts: list[tuple[str, bytes | memoryview]] = []
    cls, images = type(encoder), as_store(images)
    parts.append(("format", CACHE_FORMAT.encode()))
    parts.append(("torch", torch.__version__.encode()))
    parts.append(("device", torch.device(device).type.encode()))
    parts.append(("class", f"{cls.__module__}.{cls.__qualname__}".encode()))
    parts.append(("repr", repr(encoder).encode()))
    for attr in ("feature_dim", "input_size", "in_channels", "mean", "std", "interpolation"):
        parts.append((attr, repr(getattr(encoder, attr, None)).encode()))
    # The encoder's preprocessing of a fixed probe shaped like these images: catches
    # normalisation, channel mapping and resizing that no attribute states.
    c, hgt, wid = images.shape[1:]
    probe = torch.linspace(0, 1, c * hgt * wid).reshape(1, c, hgt, wid)
    with torch.inference_mode():
        parts.append(("probe", _tensor_bytes(cast("Encoder", encoder).preprocess(probe))))
    for name, tensor in encoder.state_dict().items():
        parts.append(("tensor", f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode()))
        parts.append(("data", _tensor_bytes(tensor)))
    parts.append(("images", f"{type(images).__name__}|{tuple(images.shape)}".encode()))
    parts.append(("pixels", images.fingerprint()))
    return _hash_parts(parts)


# SHA-256 rather than BLAKE2b: with the SHA extensions of current x86 and ARM CPUs
# hashlib's (OpenSSL's) SHA-256 runs at 1.4 GB/s per core here, BLAKE2b at 0.6 GB/s.
# Large buffers are hashed in 8 MiB chunks on a few threads (hashlib releases the GIL),
# and the key hashes the chunks' digests: a hash list, so the key of the same bytes
# does not depend on the number of threads.
_CHUNK = 8 << 20


def _hash_parts(parts: list[tuple[str, bytes | memoryview]]) -> str:
    big = [i for i, (_, data) in enumerate(parts) if len(data) > _CHUNK]
    chunk_digests: dict[int, list[bytes]] = {}
    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, 8))
    if big and workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            futures = {i: [pool.submit(_sha256, parts[i][1][j:j + _CHUNK])
                           for j in range(0, len(parts[i][1]), _CHUNK)] for i in big}
            chunk_digests = {i: [f.result() for f in fs] for i, fs in futures.items()}
    else:
        chunk_digests = {i: [_sha256(parts[i][1][j:j + _CHUNK])
                             for j in range(0, len(parts[i][1]), _CHUNK)] for i in big}
    h = hashlib.sha256()
    for i, (label, data) in enumerate(parts):
        h.update(f"{label}:{len(data)}:".encode())
        h.update(b"".join(chunk_digests[i]) if i in chunk_digests else data)
    return h.hexdigest()


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor's values (a view, no copy when it is a contiguous CPU
    tensor): hashed straight from the NumPy buffer."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    # numpy's stubs give ndarray __buffer__ (the Buffer protocol) only on Python 3.12+
    return memoryview(t.view(torch.uint8).numpy())  # type: ignore[arg-type]


def _read_cache(path: Path, n: int, dim: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        # read_tensors also checks the checksum: damaged bytes are never used as features.
        features = read_tensors(path, what="feature cache file")[0]["features"]
        if tuple(features.shape) != (n, dim) or features.dtype != torch.float32:
            raise ValueError(f"holds {features.dtype} {tuple(features.shape)}, "
                             f"expected float32 {(n, dim)}")
        return features
    except Exception as exc:  # corrupt, truncated or foreign: a cache must never crash a run
        log.warning("ignoring unreadable feature cache file %s (%s: %s); encoding again",
                    path, type(exc).__name__, exc)
        return None


def _write_cache(path: Path, features: torch.Tensor, encoder: nn.Module, images: ImageStore,
                 key: str) -> None:
    meta = {"format": CACHE_FORMAT, "key": key, "encoder": type(encoder).__qualname__,
            "weights_source": str(getattr(encoder, "weights_source", "")),
            "images": f"{type(images).__name__} {tuple(images.shape)}"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"features": features}, metadata=meta)
    except OSError as exc:
        log.warning("could not write feature cache file %s (%s: %s); continuing without it",
                    path, type(exc).__name__, exc)
