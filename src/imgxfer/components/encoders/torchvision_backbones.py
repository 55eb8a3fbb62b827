"""Built-in torchvision backbones as encoders (``resnet18``, ``resnet50``,
``mobilenet_v3_small``, ``efficientnet_b0``...): the torchvision model without its last
classifier layer, so ``forward`` returns pooled features [B, D].

One table, :data:`BACKBONES`, says which layer is the classifier of each model; everything
else (building, ImageNet weights, weight files, preprocessing) is shared. Weights come from
``pretrained``: ``"none"`` (random, seeded), ``"imagenet"`` (torchvision's default weights
enum for the model, downloaded into torch's hub cache or read from it) or a path to a
``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict (read safely: safetensors, or
``torch.load(weights_only=True)``). Offline, ``"imagenet"`` fails within seconds (a short
connection test before torch.hub's download) unless the weights are in the cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.nn.preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare
from imgxfer.nn.weights import hub_cache_file, reachable
from imgxfer.nn.weights import read_state_dict as read_weights


@dataclass(frozen=True)
class Backbone:
    head: str  # dotted name of the final classifier nn.Linear, replaced by nn.Identity
    description: str


# The features are what the last classifier layer reads: for MobileNetV3 that is the
# output of its hidden head layer (1024 / 1280-d, as timm's pre-logits), for ConvNeXt the
# layer-normed pooled features.
BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("fc", "ResNet-18 (torchvision), 512-d features"),
    "resnet34": Backbone("fc", "ResNet-34 (torchvision), 512-d features"),
    "resnet50": Backbone("fc", "ResNet-50 (torchvision), 2048-d features"),
    "mobilenet_v3_small": Backbone("classifier.3",
                                   "MobileNetV3-Small (torchvision), 1024-d features"),
    "mobilenet_v3_large": Backbone("classifier.3",
                                   "MobileNetV3-Large (torchvision), 1280-d features"),
    "efficientnet_b0": Backbone("classifier.1", "EfficientNet-B0 (torchvision), 1280-d features"),
    "convnext_tiny": Backbone("classifier.2", "ConvNeXt-Tiny (torchvision), 768-d features"),
}

MIN_INPUT_SIZE = 32  # five stride-2 stages: smaller inputs vanish before the pooling
_RANDOM = ("none", "random")
# DataParallel and this encoder prefix the keys of a state dict.
_KEY_PREFIXES = ("module.", "model.")
_SHOWN = 3  # examples per kind of mismatch in an error message


class TorchvisionEncoder(nn.Module):
    """A torchvision classification model with its last linear layer replaced by the
    identity, plus the imgxfer encoder attributes (ImageNet normalisation, RGB input)."""

    def __init__(self, arch: str, *, pretrained: str | os.PathLike[str] = "none",
                 input_size: int = 224, seed: int = 0) -> None:
        super().__init__()
        if arch not in BACKBONES:
            raise UserError(f"unknown torchvision backbone {arch!r}; "
                            f"built in: {', '.join(BACKBONES)}.")
        if (isinstance(input_size, bool) or not isinstance(input_size, int)
                or input_size < MIN_INPUT_SIZE):
            raise UserError(f"{arch}: input_size must be an integer >= {MIN_INPUT_SIZE}, "
                            f"got {input_size!r}.")
        source = _weights_source(arch, pretrained)
        # Read a weights file before building: a bad path should not wait for the model.
        state = read_state_dict(source, arch) if isinstance(source, Path) else None

        from torchvision.models import get_model

        # A private RNG stream: the same seed gives the same random weights and the
        # caller's global torch RNG is left where it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_model(arch, weights=None)
        head = BACKBONES[arch].head
        if source == "imagenet":
            weights, state, cached = _imagenet_state(arch)
            # Normally torchvision's own file for this model, but the cache is a folder a
            # user fills by hand: check it like any other file.
            load_state(model, state, head=head, path=cached, arch=arch)
            source = f"imagenet ({weights})"
        elif state is not None:  # read from a file: ``source`` is its Path
            load_state(model, state, head=head, path=cast(Path, source), arch=arch)
            source = str(source)

        linear = model.get_submodule(head)
        if not isinstance(linear, nn.Linear):  # a table entry that does not fit torchvision
            raise TypeError(f"{arch}: {head} is a {type(linear).__name__}, not nn.Linear")
        parent, _, leaf = head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())

        self.model = model
        self.arch = arch
        self.feature_dim = int(linear.in_features)
        self.input_size = (input_size, input_size)
        self.in_channels = 3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.weights_source = str(source)
        self.eval()  # feature extraction is the common use; trainers call .train()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, C, H, W] in [0, 1] (grey repeated to RGB, alpha dropped, any
        size) -> RGB at ``input_size``, normalised with ImageNet mean and std. The whole
        image is resized, without torchvision's centre crop: small target images (digits,
        scans) fill their frame."""
        return prepare(images, channels=3, size=self.input_size, mean=self.mean, std=self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.model(x)
        return features

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, feature_dim={self.feature_dim}, "
                f"input_size={self.input_size}, weights_source={self.weights_source!r}")


def factory(arch: str) -> Callable[..., TorchvisionEncoder]:
    """The registry factory of one backbone: keyword options only, typed by their defaults."""
    if arch not in BACKBONES:
        raise KeyError(arch)

    def make(pretrained: str = "none", input_size: int = 224, seed: int = 0) -> TorchvisionEncoder:
        return TorchvisionEncoder(arch, pretrained=pretrained, input_size=input_size, seed=seed)

    make.__name__ = make.__qualname__ = arch
    make.__doc__ = (f"{BACKBONES[arch].description}. pretrained: none (random, seeded), "
                    "imagenet (torchvision weights) or a .safetensors/.pth file; "
                    "input_size: pixels (>= 32).")
    return make


def _weights_source(arch: str, pretrained: Any) -> str | Path:
    if pretrained is None or pretrained in _RANDOM:
        return "random"
    if pretrained == "imagenet":
        return "imagenet"
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        raise UserError(f"{arch}: pretrained must be 'none', 'imagenet' or a path to a weights "
                        f"file, got {pretrained!r}.")
    return Path(pretrained).expanduser().resolve()


def _imagenet_state(arch: str) -> tuple[Any, dict[str, torch.Tensor], Path]:
    """torchvision's default ImageNet weights for ``arch``, from torch's hub cache or the
    download URL; offline and uncached, a UserError says where to put the file."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    cached = hub_cache_file(weights.url)
    # Offline, torch.hub would spend about a minute failing; a cached file needs no network.
    if not cached.is_file() and not reachable(weights.url):
        host = urlparse(weights.url).hostname
        raise _no_download(arch, weights, cached, f"no connection to {host}")
    try:
        # weights_only: the cache is a folder anyone may have put a file into.
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True,
                                                   weights_only=True)
    except Exception as exc:  # URLError, socket errors, a hash mismatch, an unreadable file...
        if cached.is_file():
            raise UserError(f"the cached ImageNet weights {str(cached)!r} for {arch} could not "
                            f"be read ({type(exc).__name__}: {exc}); delete the file and try "
                            "again.") from None
        raise _no_download(arch, weights, cached, type(exc).__name__) from None
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"the cached ImageNet weights {str(cached)!r} for {arch} do not hold a "
                        "state dict; delete the file and try again.")
    return weights, dict(state), cached


def _no_download(arch: str, weights: Any, cached: Path, why: str) -> UserError:
    """Where the file goes: ``cached``, torch's hub cache entry for the download."""
    file_name, cache_dir = cached.name, cached.parent
    return UserError(
        f"could not download ImageNet weights for {arch} ({weights}) from {weights.url} "
        f"({why}); on a machine with internet access download that file and put it, named "
        f"{file_name}, into {cache_dir} (torch's hub cache: $TORCH_HOME/hub/checkpoints), or "
        "pass pretrained=/path/to/weights.safetensors (or .pth).")


def read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    return read_weights(path, f"weights file {str(path)!r} for {arch}")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, head: str, path: Path,
               arch: str) -> None:
    """Load ``state`` into the full torchvision ``model`` (head still in place). The file's
    classifier head is optional and may have any number of classes (it is removed
    afterwards); any other missing, unexpected or mis-shaped tensor is a UserError."""
    expected = model.state_dict()
    state = _strip_prefix(state, expected)
    head_keys = {k for k in expected if k.startswith(head + ".")}
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing = [k for k in expected if k not in state and k not in head_keys
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} in the file vs {list(v.shape)} in the model"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN])})"
                for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("size mismatches", mismatched)) if keys]
    if problems:
        raise UserError(f"weights file {str(path)!r} does not fit torchvision model {arch!r}: "
                        f"{', '.join(problems)}; was it saved from another architecture?")
    model.load_state_dict(state, strict=False)  # strict apart from the head, checked above


def _strip_prefix(state: dict[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for _ in _KEY_PREFIXES:  # "module.model.x" (a DataParallel-wrapped encoder) takes two
        if any(k in expected for k in state):
            return state
        for prefix in _KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
    return state
