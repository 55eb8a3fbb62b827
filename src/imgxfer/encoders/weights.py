"""Weights for encoders, shared by the built-in torchvision backbones and encoder plugins
(imgxfer-timm): reading a user's weights file safely, and telling quickly whether a
download host can be reached at all."""

from __future__ import annotations

import pickle
import re
import socket
import threading
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imgxfer.errors import UserError

# What a weights file may be called, and the keys a training checkpoint wraps its state
# dict in.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict", "model")
# Seconds to wait for a download host before calling the machine offline: torch.hub and
# the Hugging Face hub retry for about a minute before they fail.
PROBE_SECONDS = 2.0


def load_weights_file(path: Path, what: str) -> Any:
    """What ``path`` holds: a .safetensors file, or a torch file read with
    ``weights_only=True`` (tensors and plain containers only: unpickling arbitrary
    objects can run code). ``what`` names the file in the one-sentence errors."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's advice is six lines ending in "unsafe"
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None and "Unsupported global" not in str(exc):  # damaged, not unsafe
            raise UserError(f"{what} could not be read as weights (it is not a torch "
                            "checkpoint, or it is damaged).") from None
        held = f" such as {found.group(1)}" if found else ""
        raise UserError(
            f"{what} is not a safetensors file or a weights-only torch checkpoint (it holds "
            f"pickled Python objects{held}, which imgxfer does not load because that can run "
            "code); where you trust the file, save its state dict with "
            "safetensors.torch.save_file and pass that file.") from None
    except Exception as exc:  # a corrupt or foreign file fails in library-specific ways
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{what} could not be read as weights ({type(exc).__name__}"
                        f"{': ' + reason if reason else ''}).") from None


def read_state_dict(path: Path, what: str) -> dict[str, Any]:
    """The tensors in ``path`` (.safetensors, or .pth/.pt/.bin read with
    ``weights_only=True``), unwrapped from a training checkpoint if need be; ``what``
    names the file in errors (``"weights file 'x.pth' for resnet18"``)."""
    import torch

    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(f"{what} must end in {', '.join(WEIGHT_SUFFIXES)}, "
                        f"not {path.suffix or 'nothing'!r}.")
    if not path.is_file():
        raise UserError(f"{what} does not exist.")
    data = load_weights_file(path, what)
    for key in _WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{what} does not hold a state dict (a mapping of names to tensors).")
    return dict(data)


def hub_cache_file(url: str) -> Path:
    """Where torch.hub keeps the download of ``url`` (torchvision's and timm's plain-URL
    weights): $TORCH_HOME/hub/checkpoints/<file name of the URL>."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the host of ``url`` accepts a connection within ``timeout`` seconds, name
    lookup included. True behind a proxy: the download goes through it, not to the host."""
    parts = urlparse(url)
    host = parts.hostname
    if not host or _proxied(parts.scheme, host):
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    # A thread, because a name lookup has no timeout of its own.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


def _proxied(scheme: str, host: str) -> bool:
    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)
