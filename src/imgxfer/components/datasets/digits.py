"""Digit datasets that ship offline: digits rendered from matplotlib's fonts (a synthetic
source) and scikit-learn's 1,797 real handwritten 8x8 digits (a small real target)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.layout import GLYPH, fit_to_box

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Fonts bundled with matplotlib whose digits are ordinary glyphs (no symbol or math fonts).
_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf",
]


def _font_paths() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in _FONTS if (folder / name).exists()]
    if not paths:
        raise UserError(f"no fonts found in {folder}; is matplotlib installed completely?")
    return paths


def _render(digit: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> np.ndarray:
    """One digit, white on black, with random stroke, rotation, shear and blur."""
    canvas = Image.new("L", (96, 96), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 3))
    draw.text((48, 48), digit, fill=255, font=font, anchor="mm", stroke_width=stroke,
              stroke_fill=255)
    shear = rng.uniform(-0.3, 0.3)
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                              (1, shear, -shear * 48, 0, 1, 0), resample=Image.Resampling.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def syndigits(*, n_per_class: int = 400, size: int = 32, noise: float = 0.05,
              seed: int = 0) -> ImageDataset:
    """Digits rendered from matplotlib's bundled fonts with random style (synthetic source)."""
    if n_per_class < 1:
        raise UserError(f"syndigits needs n_per_class >= 1, got {n_per_class}.")
    rng = np.random.default_rng(seed)
    # Each font is read once (reading one per image took about a fifth of the rendering).
    fonts = [ImageFont.truetype(str(path), 64) for path in _font_paths()]
    images, labels = [], []
    for label, digit in enumerate("0123456789"):
        for _ in range(n_per_class):
            images.append(_render(digit, fonts[rng.integers(len(fonts))], rng))
            labels.append(label)
    raw = torch.from_numpy(np.stack(images))[:, None]
    # Random scale and shift around the MNIST layout, so the source covers the target's
    # variation rather than one exact placement.
    boxed = fit_to_box(raw, canvas=size)
    boxed = _jitter(boxed, rng)
    boxed = (boxed + noise * torch.from_numpy(rng.standard_normal(boxed.shape)).float()).clamp(0, 1)
    return ImageDataset(boxed, torch.tensor(labels), list(DIGIT_NAMES), "syndigits",
                        description="rendered digit", layout=GLYPH)


def _jitter(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Scale in [0.85, 1.1] and shift by up to 2 px, per image (affine grid)."""
    n = len(images)
    scale = torch.from_numpy(rng.uniform(0.85, 1.1, n)).float()
    shift = torch.from_numpy(rng.uniform(-2, 2, (n, 2))).float() * 2 / images.shape[-1]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, align_corners=False)


def digits(*, size: int = 32) -> ImageDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, upscaled into the MNIST layout."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    # Upsample first so the box fitting works on smooth strokes instead of 8x8 blocks.
    raw = torch.nn.functional.interpolate(raw, scale_factor=4, mode="bicubic",
                                          align_corners=False).clamp(0, 1)
    return ImageDataset(fit_to_box(raw, canvas=size, threshold=0.2),
                        torch.from_numpy(bunch.target), list(DIGIT_NAMES), "digits",
                        description="handwritten digit", layout=GLYPH)

