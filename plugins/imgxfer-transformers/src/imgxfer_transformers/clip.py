"""CLIP from a local folder: the ``clip:PATH`` encoder (CLIP's image tower) and what the
``clip:PATH`` adapter needs from the text tower (class embeddings from prompts).

The encoder returns CLIP's image embedding, L2-normalised, so a linear head over it with
the normalised text embeddings of the class prompts (times CLIP's logit scale) as weights
*is* CLIP's zero-shot classifier. It may carry a Tip-Adapter cache
(:class:`TipCache`): then each image's affinities to the cached images follow its
embedding, ``feature_dim`` grows by the cache size, and the cache's keys travel in the
encoder's state dict (``cache.keys``, ``cache.beta``); loading such a state gives a
freshly built encoder the cache back (:meth:`ClipImageEncoder._load_from_state_dict`).

Only CLIP models (``model_type = "clip"``, transformers' ``CLIPModel``) are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgxfer import UserError, match_channels
from imgxfer_transformers.folders import LOAD_ERRORS, check_folder, load_local

__all__ = ["ClipImageEncoder", "TipCache", "load_clip", "load_tokenizer", "make_clip_encoder",
           "class_embeddings", "fill_prompt"]

_WHAT = "a CLIP model"
# OpenAI CLIP's image statistics, for a folder saved without its image processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PROMPT_FIELDS = ("label", "description")


def load_clip(path: str, name: str) -> tuple[Path, Any]:
    """(folder, ``CLIPModel`` in eval mode on the CPU) from a local folder."""
    folder, model_type = check_folder(path, name, _WHAT)
    if model_type != "clip":
        raise UserError(f"{name}: {str(path)!r} holds a {model_type!r} model, not CLIP "
                        "(model_type 'clip').")
    from transformers import CLIPModel

    return folder, load_local(CLIPModel.from_pretrained, folder, name, "CLIP model",
                              use_safetensors=True).eval()


def load_tokenizer(folder: Path, name: str) -> Any:
    """The text tokenizer saved beside a CLIP model (needed for class prompts)."""
    from transformers import AutoTokenizer

    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json",
                                                "tokenizer_config.json")):
        raise UserError(f"{name}: {str(folder)!r} has no tokenizer; the CLIP adapter turns "
                        "class names into text with it (save the processor with the model).")
    return load_local(AutoTokenizer.from_pretrained, folder, name, "tokenizer")


def image_statistics(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the image processor saved with the model, else OpenAI CLIP's."""
    from transformers import AutoImageProcessor

    try:
        processor = load_local(AutoImageProcessor.from_pretrained, folder, "clip", "processor")
        return tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))
    except (UserError, AttributeError, TypeError) + LOAD_ERRORS:
        return CLIP_MEAN, CLIP_STD


class TipCache(nn.Module):
    """Tip-Adapter's cache model (Zhang et al. 2022): ``keys`` [K, D] are normalised CLIP
    embeddings of cached images; ``forward(f)`` is each embedding's affinity to every key,
    ``exp(-beta * (1 - f . key))`` [B, K]. The cached labels (the values) are linear in the
    affinities, so they live in the classifier's head. Tip-Adapter-F trains ``keys``."""

    def __init__(self, keys: torch.Tensor, beta: float) -> None:
        super().__init__()
        self.keys = nn.Parameter(keys.detach().clone().float())
        self.register_buffer("beta", torch.tensor(float(beta)))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.beta * (1 - features @ self.keys.t()))


class ClipImageEncoder(nn.Module):
    """CLIP's image tower and projection as an imgxfer encoder: L2-normalised image
    embeddings [B, projection_dim], followed by Tip-Adapter affinities when a cache is set.
    """

    def __init__(self, vision_model: nn.Module, projection: nn.Module, *, folder: Path,
                 image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.vision_model, self.projection = vision_model, projection
        self.register_module("cache", None)
        self.path = folder
        self.embed_dim = int(projection.out_features)
        self.input_size = (int(image_size), int(image_size))
        self.in_channels = 3
        self.weights_source = str(folder)
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def feature_dim(self) -> int:
        return self.embed_dim + (len(self.cache) if self.cache is not None else 0)

    def set_cache(self, cache: TipCache | None) -> None:
        self.cache = cache

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP image embeddings of preprocessed images."""
        pooled = self.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.projection(pooled), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.embed(x)
        if self.cache is None:
            return features
        return torch.cat([features, self.cache(features)], dim=1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, C, H, W] in [0, 1] (1, 3 or 4 channels, any size) as CLIP reads
        them: RGB, resized whole to the input size (bicubic, antialiased; no centre crop,
        which would cut the edges off small images that fill their frame), normalised."""
        x = match_channels(images.float(), 3)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # A saved Tip-Adapter cache comes back with its size; torch then loads its values.
        keys = state_dict.get(prefix + "cache.keys")
        if keys is not None and (self.cache is None or self.cache.keys.shape != keys.shape):
            self.set_cache(TipCache(torch.zeros_like(keys, dtype=torch.float32), beta=1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"path={str(self.path)!r}, embed_dim={self.embed_dim}, "
                f"input_size={self.input_size}, cache={len(self.cache) if self.cache else 0}")


def encoder_from_model(model: Any, folder: Path) -> ClipImageEncoder:
    """The image side of a loaded ``CLIPModel`` as an encoder (sharing its modules)."""
    mean, std = image_statistics(folder)
    return ClipImageEncoder(model.vision_model, model.visual_projection, folder=folder,
                            image_size=model.config.vision_config.image_size, mean=mean,
                            std=std)


def make_clip_encoder(path: str) -> ClipImageEncoder:
    """CLIP's image tower from a local folder as an encoder (clip:PATH): normalised
    image embeddings, the model's own input size and image statistics."""
    folder, model = load_clip(path, f"clip:{path}")
    return encoder_from_model(model, folder).eval()


def fill_prompt(template: str, label: str, description: str) -> str:
    """A class prompt: ``{label}`` and ``{description}`` filled, spaces tidied
    ("a photo of a {description} {label}." without a description: "a photo of a seven.")."""
    text = template.format(label=label.replace("_", " "), description=description)
    return " ".join(text.split())


def check_prompts(prompts: Any, name: str) -> list[str]:
    """Prompt templates as a list; one sentence for anything unusable."""
    import string

    listed = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        raise UserError(f"{name}: prompts must be a template or a list of templates, got "
                        f"{prompts!r}.")
    for template in listed:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as error:
            raise UserError(f"{name}: prompt {template!r} is invalid ({error}).") from None
        if "label" not in fields or fields - set(_PROMPT_FIELDS):
            raise UserError(f"{name}: prompt {template!r} must use {{label}} and may use "
                            "{description}, no other field.")
    return listed


@torch.inference_mode()
def class_embeddings(model: Any, tokenizer: Any, class_names: Sequence[str], description: str,
                     templates: Sequence[str], device: torch.device) -> torch.Tensor:
    """[C, D] normalised text embeddings of each class's prompts, averaged over the
    templates and normalised again (CLIP's prompt ensembling), on the CPU."""
    rows = []
    for label in class_names:
        prompts = [fill_prompt(t, str(label), description) for t in templates]
        tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        out = model.text_model(input_ids=tokens["input_ids"].to(device),
                               attention_mask=tokens["attention_mask"].to(device))
        embedded = F.normalize(model.text_projection(out.pooler_output), dim=-1).mean(0)
        rows.append(F.normalize(embedded, dim=0).float().cpu())
    return torch.stack(rows)
