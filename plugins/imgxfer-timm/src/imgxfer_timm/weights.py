"""Loading a user's weights file into a timm model: tensors only, never arbitrary pickles,
and a clear error when the file belongs to another architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from imgxfer.errors import UserError
from torch import nn

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
# Checkpoints written by training scripts wrap the state dict; nn.DataParallel and the
# imgxfer encoder (whose backbone is its ``model`` attribute) prefix every key.
_WRAPPER_KEYS = ("state_dict", "model")
_KEY_PREFIXES = ("module.", "model.")
_SHOWN = 3  # examples per kind of mismatch in an error message


def read_state_dict(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """The tensors in ``path`` (.safetensors, or .pth/.pt/.bin read with
    ``weights_only=True``), unwrapped from a training checkpoint if need be."""
    what = f"weights file {str(path)!r} for timm model {model_name!r}"
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{what} must end in {', '.join(SUFFIXES)}, not {path.suffix or 'nothing'!r}.")
    if not path.is_file():
        raise UserError(f"{what} does not exist.")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            # weights_only refuses anything but tensors and plain containers, so a
            # malicious pickle cannot run code here.
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file can fail in many library-specific ways
        raise UserError(f"{what} could not be read as weights ({type(exc).__name__}: {exc}).") from None
    for key in _WRAPPER_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{what} does not hold a state dict (a mapping of names to tensors).")
    return dict(data)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
               model_name: str) -> None:
    """Load ``state`` (read from ``path``) into ``model`` (built with ``num_classes=0``)
    strictly, ignoring only the classifier head; any other missing, unexpected or
    mis-shaped tensor is an error."""
    expected = model.state_dict()
    state = _strip_prefix(state, expected)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    _drop_head(state, expected, cfg.get("classifier"))
    _adapt_first_conv(state, expected, cfg.get("first_conv"))

    # BatchNorm creates num_batches_tracked itself when a file lacks it (older checkpoints).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} in the file vs {list(v.shape)} in the model"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN])})"
                for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("size mismatches", mismatched)) if keys]
    if problems:
        raise UserError(
            f"weights file {str(path)!r} does not fit timm model {model_name!r}: "
            f"{', '.join(problems)}; was it saved from another architecture?"
        )
    model.load_state_dict(state, strict=False)  # strict apart from num_batches_tracked, checked above


def _strip_prefix(state: dict[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not state or any(k in expected for k in state):
        return state
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _drop_head(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
               classifier: str | Sequence[str] | None) -> None:
    """Remove the classifier's tensors: the encoder is built without a head
    (``num_classes=0``), so a checkpoint trained for any number of classes fits."""
    heads = _names(classifier)
    for key in [k for k in state if k not in expected]:
        if any(key == h or key.startswith(h + ".") for h in heads):
            del state[key]


def _adapt_first_conv(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      first_conv: str | Sequence[str] | None) -> None:
    """Fit RGB first-layer weights to a model built with ``in_channels`` != 3, as timm
    itself does when it downloads pretrained weights."""
    from timm.models import adapt_input_conv

    for key in (f"{name}.weight" for name in _names(first_conv)):
        have, want = state.get(key), expected.get(key)
        if (have is None or want is None or have.ndim != 4 or have.shape == want.shape
                or have.shape[1] != 3 or have.shape[0] != want.shape[0]
                or have.shape[2:] != want.shape[2:]):
            continue
        state[key] = adapt_input_conv(want.shape[1], have)
