"""Class-activation maps: where in an image a trained classifier looks when it decides
on a class. `imgxfer explain` and the run report's explanations section use it.

The maps themselves come from pytorch-grad-cam (package ``grad-cam``); this module
only chooses the layer they are read from, runs the library on an imgxfer
:class:`~imgxfer.nn.classifier.Classifier` (an encoder and a linear head) and draws the
overlays. Any encoder works whose network has a layer with a spatial output
([B, C, H, W]); docs/architecture.md says where this sits in the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.nn.layers import output_shapes
from imgxfer.plugin.protocols import Encoder, encoder_input_size

# --method names and the pytorch-grad-cam classes behind them (imported when used:
# the library pulls in OpenCV). All read one layer's activations; eigencam uses no
# gradients, so its map is the same whatever class is explained.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}
DEFAULT_METHOD = "gradcam"
# Images explained per library call: gradients of a 224-px backbone for a larger batch
# would not fit in a small GPU.
BATCH = 32


@dataclass
class Explanation:
    """Maps of N images: ``maps`` [N, H, W] in [0, 1] at the classifier's input size
    (1 where it looks most), the ``explained`` class of each, the class probabilities
    ``proba`` [N, K] and the ``layer`` the maps were read from."""

    maps: np.ndarray
    explained: list[int]
    proba: torch.Tensor
    layer: str
    method: str


def spatial_layers(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The modules of ``model`` that give a spatial map ([B, C, H, W]) for one image of the
    encoder's input size, in the order their outputs are complete, with that shape.
    Modules called more than once per forward pass (a ReLU shared inside a ResNet block)
    are left out: the library would mix up their several outputs."""
    encoder = cast(Encoder, model.encoder)  # a Classifier's (typed nn.Module)
    device = next(model.parameters()).device
    example = torch.zeros(1, encoder.in_channels, *encoder_input_size(encoder), device=device)
    return [(name, shape) for name, shape in
            output_shapes(model, lambda: model(encoder.preprocess(example)))
            if len(shape) == 4]


def find_target_layer(model: nn.Module, name: str | None = None) -> str:
    """The module the maps are read from: ``name`` (as in ``model.named_modules()``, e.g.
    ``encoder.features``; the ``encoder.`` prefix may be left out), else the last module
    with a spatial output larger than 1x1 (the last conv block of a CNN). A name that
    is no such module is one sentence listing some that are."""
    layers = spatial_layers(model)
    if not layers:
        raise UserError(f"the encoder {type(model.encoder).__name__} has no layer with a "
                        "spatial output ([B, C, H, W]); class-activation maps need one.")
    if name is None:
        # A 1x1 map (a ResNet's last stage on small images) is one value: it shows no
        # place, so the last layer that still has a grid is chosen instead.
        wide = [n for n, shape in layers if shape[2] * shape[3] > 1]
        return (wide or [layers[-1][0]])[-1]
    names = [n for n, _ in layers]
    # The ones worth trying first: those with a grid, nearest the head.
    some = ", ".join(([n for n, shape in layers if shape[2] * shape[3] > 1] or names)[-6:])
    for candidate in (name, f"encoder.{name}"):
        if candidate in names:
            return candidate
    modules = dict(model.named_modules())
    if name in modules or f"encoder.{name}" in modules:
        raise UserError(f"--target-layer {name!r} gives no spatial map ([B, C, H, W]) once per "
                        f"image; layers that do include: {some}.")
    raise UserError(f"--target-layer {name!r} is not a layer of the classifier; layers with a "
                    f"spatial output include: {some}.")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    return method


def explain(model: nn.Module, images: torch.Tensor, classes: Sequence[int] | None = None, *,
            method: str = DEFAULT_METHOD, layer: str | None = None) -> Explanation:
    """Maps of raw [0, 1] ``images`` [N, C, H, W] for ``classes`` (one per image; the
    predicted class where None), read from ``layer`` (found when None), by ``method``.
    The model is used as it is (its device, weights); its train/eval mode is kept."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = find_target_layer(model, layer)
    proba = class_probabilities(model, images)
    explained = proba.argmax(1).tolist() if classes is None else [int(c) for c in classes]
    if any(not 0 <= c < proba.shape[1] for c in explained) or len(explained) != len(images):
        raise UserError(f"classes to explain must be one per image, each from 0 to "
                        f"{proba.shape[1] - 1}, got {list(classes or [])[:5]}.")
    module = dict(model.named_modules())[layer]
    device = next(model.parameters()).device
    was_training = model.training
    maps = []
    try:
        with getattr(pytorch_grad_cam, METHODS[check_method(method)])(model, [module]) as cam:
            for i in range(0, len(images), BATCH):
                x = cast(Encoder, model.encoder).preprocess(images[i:i + BATCH].to(device))
                # An input that needs gradients: a frozen encoder (linear probe) would
                # otherwise give the layer's output no gradient to read.
                x = x.detach().requires_grad_(True)
                targets = [ClassifierOutputTarget(k) for k in explained[i:i + BATCH]]
                with torch.enable_grad():
                    maps.append(cam(input_tensor=x, targets=targets))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if sum(len(m) for m in maps) != len(images):
        # The library's context manager swallows an IndexError and returns nothing.
        raise RuntimeError(f"pytorch-grad-cam returned {sum(len(m) for m in maps)} maps for "
                           f"{len(images)} images.")
    size = encoder_input_size(model.encoder)
    stacked = np.concatenate(maps) if maps else np.zeros((0, *size), np.float32)
    return Explanation(stacked.astype(np.float32), explained, proba, layer, method)


@torch.no_grad()
def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the classifier's logits for raw [0, 1] images, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(cast(Encoder, model.encoder).preprocess(images[i:i + BATCH].to(device)))
               .float().softmax(1).cpu() for i in range(0, len(images), BATCH)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, cast(nn.Linear, model.head).out_features)


def rgb(image: torch.Tensor) -> np.ndarray:
    """A [C, H, W] image in [0, 1] as uint8 [H, W, 3] (grey repeated)."""
    image = image.detach().float().cpu().clamp(0, 1)
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    return cast(np.ndarray, (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def overlay(image: torch.Tensor, cam: np.ndarray, *, min_size: int = 0,
            image_weight: float = 0.55) -> np.ndarray:
    """A [C, H, W] image in [0, 1] with its map laid over it as a heat map (red where the
    classifier looks most): uint8 [H', W', 3], at the larger of the image's and the
    map's size, then enlarged by a whole factor to at least ``min_size`` pixels."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = image.detach().float().cpu().clamp(0, 1)
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    h, w = max(image.shape[1], cam.shape[0]), max(image.shape[2], cam.shape[1])
    resize: Callable[[torch.Tensor], torch.Tensor] = (  # noqa: E731
        lambda t: torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear",
                                                  align_corners=False)[0])
    base = resize(image).clamp(0, 1).permute(1, 2, 0).numpy()
    heat = resize(torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None])[0]
    out = show_cam_on_image(base, heat.clamp(0, 1).numpy(), use_rgb=True,
                            image_weight=image_weight)
    scale = max(1, -(-min_size // max(h, w)))  # ceil: small images become visible
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
