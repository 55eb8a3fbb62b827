"""Weights for encoders, shared by the built-in torchvision backbones and encoder plugins
(imgxfer-timm): reading a user's weights file safely, and telling quickly whether a
download host can be reached at all."""

from __future__ import annotations

import json
import pickle
import re
import socket
import threading
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imgxfer.core.errors import UserError

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


# Weights files that are pickles: loading one can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Keys of a saved config that make transformers or diffusers import the folder's own code.
_CODE_KEYS = ("auto_map", "custom_pipeline")


def check_model_folder(folder: Path, name: str) -> None:
    """Refuse, in one :class:`UserError` sentence naming the component (``name``) and the
    file, a saved Hugging Face model folder that could run code when loaded: one that
    holds Python files or a config with ``auto_map`` (custom code, which imgxfer never
    runs: ``trust_remote_code`` is always off), or whose weights are pickles with no
    safetensors file beside them (only safetensors are loaded)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    relative: Callable[[Path], str] = lambda p: str(p.relative_to(folder))  # noqa: E731
    for path in files:
        if path.suffix == ".py" or (path.suffix == ".json" and _names_code(path)):
            raise UserError(
                f"{name}: {str(folder)!r} holds custom code ({relative(path)}), and imgxfer "
                "never runs a model folder's own code; use a model that transformers or "
                "diffusers implement, saved without custom code.")
    for path in files:
        beside = path.parent.glob("*.safetensors")
        if path.suffix.lower() in PICKLE_SUFFIXES and next(beside, None) is None:
            raise UserError(
                f"{name}: {relative(path)} in {str(folder)!r} is a pickled weights file, "
                "and imgxfer loads only safetensors (pickles can run code); save the model "
                "with save_pretrained(..., safe_serialization=True).")


def _names_code(path: Path) -> bool:
    """Whether a JSON config asks for the folder's own code (a top-level ``auto_map``)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # unreadable configs are the loader's to word
    return isinstance(config, dict) and any(key in config for key in _CODE_KEYS)
