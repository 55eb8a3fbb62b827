"""`template`: captions from the label (or a classifier's prediction), the domain and
visible attributes measured from the pixels.

A caption fills a template, by default::

    "a {description} {label}, {attributes}, domain {domain}"
    -> "a handwritten digit seven, white ink on black, medium strokes, large, centred,
        high contrast, low brightness, domain digits"

``{attributes}`` are a few words per property, measured with batched tensor ops (no
model, no randomness, so the same image always gets the same words):

- **ink and background colour**: the background is the median colour of the image's
  border; ink is every pixel whose colour differs from it by more than half of the
  image's 99th-percentile difference. Both are named from a small palette (black, dark
  grey, grey, light grey, white, red, orange, brown, yellow, green, cyan, blue, purple,
  pink): "white ink on black", "blue ink on white";
- **stroke**: ink width w from the ink's area A and perimeter P as if it were one w x L
  rectangle (A = wL, P = 2(w + L); for long strokes w is about 2A / P), relative to
  the image side: thin, medium or thick;
- **size** and **position**: the ink's bounding box (2 % of the ink trimmed on each side,
  so a stray pixel does not count): small, medium or large from its longer side; centred,
  left, right, top, bottom, top-left... from its centre;
- **contrast** (mean colour difference between ink and background) and **brightness**
  (mean luminance): low, medium or high.

An image without ink (a flat image) is described as "blank <colour> background".
Bucketing into few words keeps captions useful to a bag-of-words text encoder (see
:mod:`imgxfer.nn.text`). :meth:`TemplateCaptioner.attributes` returns the raw
measured numbers alongside the words.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import torch

from imgxfer.core.errors import UserError

FIELDS = ("description", "label", "domain", "attributes")
DEFAULT_TEMPLATE = "a {description} {label}, {attributes}, domain {domain}"

_LUMA = torch.tensor([0.299, 0.587, 0.114])
# Images per chunk are chosen so that one chunk holds at most this many pixel values.
_CHUNK_VALUES = 1 << 24
# Below this colour difference (99th percentile) an image counts as blank.
_MIN_SPAN = 0.12
_TRIM = 0.02  # share of the ink left out on each side of the bounding box

# Palette. Achromatic colours by luminance, chromatic ones by hue (degrees).
_GREYS = ["black", "dark grey", "grey", "light grey", "white"]
_GREY_EDGES = [0.2, 0.4, 0.6, 0.8]
_HUES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "red"]
_HUE_EDGES = [15.0, 40.0, 70.0, 165.0, 195.0, 255.0, 290.0, 335.0]
_MIN_CHROMA = 0.15  # max - min of RGB; below it a colour is a grey
_MIN_VALUE = 0.15  # max of RGB; below it a colour is black whatever its hue
_BROWN_VALUE = 0.6  # an orange darker than this is brown
_PINK_MIN = 0.45  # a red whose every channel is at least this is pink

LEVELS = ["low", "medium", "high"]
_BRIGHTNESS_EDGES = [0.35, 0.65]  # mean luminance
_CONTRAST_EDGES = [0.35, 0.65]  # mean ink-background difference
STROKES = ["thin", "medium", "thick"]
_STROKE_EDGES = [0.07, 0.12]  # stroke width / image side
SIZES = ["small", "medium", "large"]
_SIZE_EDGES = [0.4, 0.7]  # longer bounding-box side / image side
_SIDE_EDGES = [0.4, 0.6]  # bounding-box centre: left/top below, right/bottom above


def _check_template(template: str) -> set[str]:
    """The template's fields; a :class:`UserError` for an unusable template."""
    fields = set()
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is not None:
                fields.add(name)
    except ValueError as exc:
        raise UserError(f"captioner template {template!r} is invalid ({exc}); it may use the "
                        "fields {description}, {label}, {domain} and {attributes}.") from None
    unknown = sorted(fields - set(FIELDS))
    if unknown:
        shown = ", ".join("{" + f + "}" for f in unknown)
        raise UserError(f"captioner template {template!r} uses unknown field(s) {shown}; it "
                        "may use {description}, {label}, {domain} and {attributes}.")
    if "label" not in fields:
        raise UserError(f"captioner template {template!r} has no {{label}} field; a caption "
                        "must name the class.")
    return fields


def _bucket(values: torch.Tensor, edges: Sequence[float]) -> list[int]:
    values = values.contiguous()
    return torch.bucketize(values, torch.tensor(edges, dtype=values.dtype), right=True).tolist()


def colour_names(rgb: torch.Tensor) -> list[str]:
    """Palette names of colours ``[N, 3]`` in [0, 1] ("white", "dark grey", "red"...)."""
    rgb = rgb.float().cpu().clamp(0, 1)
    top, _ = rgb.max(1)
    chroma = top - rgb.min(1).values
    r, g, b = rgb.unbind(1)
    safe = chroma.clamp(min=1e-6)
    hue = torch.where(top == r, ((g - b) / safe) % 6,
                      torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    greys = _bucket(rgb @ _LUMA, _GREY_EDGES)
    hues = _bucket(hue, _HUE_EDGES)
    chromatic = ((chroma >= _MIN_CHROMA) & (top >= _MIN_VALUE)).tolist()
    dark = (top < _BROWN_VALUE).tolist()
    names = []
    pale = (rgb.min(1).values >= _PINK_MIN).tolist()
    for is_colour, grey, h, is_dark, is_pale in zip(chromatic, greys, hues, dark, pale, strict=True):
        if not is_colour:
            names.append(_GREYS[grey])
        elif _HUES[h] == "orange" and is_dark:
            names.append("brown")
        elif _HUES[h] == "red" and is_pale:
            names.append("pink")
        else:
            names.append(_HUES[h])
    return names


def _profile_span(profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index [N] holding the ink of ``profile`` [N, L], trimmed by _TRIM."""
    cum = profile.cumsum(1)
    total = cum[:, -1:]
    lo = (cum <= _TRIM * total).sum(1)
    hi = (cum < (1 - _TRIM) * total).sum(1)
    return lo, torch.maximum(hi, lo)


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw attributes of ``images`` [N, C, H, W] (C = 1 or 3, values in [0, 1]) as CPU
    tensors with N rows; see the module docstring for what each one means."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    step = max(1, _CHUNK_VALUES // max(1, 3 * h * w))
    parts = [_measure_chunk(images[i:i + step]) for i in range(0, n, step)]
    if not parts:
        return _measure_chunk(images[:0])
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` [N, C, P] over the pixels where ``mask`` [N, P] (float 0/1) is set."""
    total = torch.bmm(x, mask[:, :, None])[..., 0]
    return total / mask.sum(1, keepdim=True).clamp(min=1)


def _measure_chunk(images: torch.Tensor) -> dict[str, torch.Tensor]:
    x = images.detach().float()
    n, c, h, w = x.shape
    if len(x):
        low, high = torch.aminmax(x)
        if low < 0 or high > 1:
            x = x.clamp(0, 1)
    # Greyscale stays one channel (a third of the work); colours become RGB at the end.
    luma = x[:, 0] if c == 1 else torch.einsum("nchw,c->nhw", x, _LUMA.to(x.device))
    if h > 2 and w > 2:
        border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]],
                           dim=-1)
    else:
        border = x.flatten(2)
    background = border.median(dim=-1).values  # [N, C]
    diff = (x - background[..., None, None]).abs_()
    delta = diff[:, 0] if c == 1 else diff.amax(1)  # [N, H, W] colour distance
    k = max(1, (h * w) // 100)
    span = delta.flatten(1).topk(k, dim=1).values[:, -1]  # 99th percentile
    blank = span < _MIN_SPAN
    level = span.masked_fill(blank, float("inf"))[:, None, None]
    ink = delta > 0.5 * level
    ink_f = ink.float()
    area = ink_f.sum((1, 2))
    flat = x.flatten(2)
    # Ink colour: its core (the anti-aliased rim would grey it); background colour: the
    # pixels clearly away from the ink (all of them in a blank image).
    core = (delta >= 0.8 * level).float().flatten(1)
    back = ((delta <= 0.25 * span[:, None, None]) | blank[:, None, None]).float().flatten(1)
    ink_colour = _masked_mean(flat, core)
    back_colour = torch.where(back.sum(1, keepdim=True) > 0, _masked_mean(flat, back), background)
    contrast = (delta * ink_f).sum((1, 2)) / area.clamp(min=1)
    # Each ink pixel has 4 sides; a side shared with an ink neighbour is not perimeter.
    neighbours = ((ink_f[:, :, 1:] * ink_f[:, :, :-1]).sum((1, 2))
                  + (ink_f[:, 1:, :] * ink_f[:, :-1, :]).sum((1, 2)))
    perimeter = 4 * area - 2 * neighbours
    # The width w of a w x L rectangle with this area and perimeter: exact for straight
    # strokes and blobs, about 2 * area / perimeter for long curved ones.
    half = perimeter / 2
    stroke_px = (half - (half * half - 4 * area).clamp(min=0).sqrt()) / 2
    x0, x1 = _profile_span(ink_f.sum(1))
    y0, y1 = _profile_span(ink_f.sum(2))
    box = torch.stack([x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h], 1).float()
    centre = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], 1)
    extent = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    zero = torch.zeros_like(area)
    out = {
        "blank": blank,
        "ink_rgb": torch.where(blank[:, None], back_colour, ink_colour).expand(n, 3),
        "background_rgb": back_colour.expand(n, 3),
        "brightness": luma.mean((1, 2)),
        "contrast": contrast,  # zero in a blank image: no ink
        "ink_fraction": area / (h * w),
        "stroke_px": stroke_px,
        "stroke": stroke_px / min(h, w),
        "box": torch.where(blank[:, None], torch.zeros_like(box), box),
        "centre": torch.where(blank[:, None], torch.full_like(centre, 0.5), centre),
        "extent": torch.where(blank, zero, extent),
    }
    return {k: v.cpu().contiguous() for k, v in out.items()}


def _position(cx: int, cy: int) -> str:
    horizontal = ["left", "", "right"][cx]
    vertical = ["top", "", "bottom"][cy]
    if horizontal and vertical:
        return f"{vertical}-{horizontal}"
    return horizontal or vertical or "centred"


def words(m: dict[str, torch.Tensor]) -> list[dict[str, str]]:
    """The bucketed words of measurements from :func:`measure`, one dict per image."""
    columns = {
        "ink": colour_names(m["ink_rgb"]),
        "background": colour_names(m["background_rgb"]),
        "brightness": [LEVELS[i] for i in _bucket(m["brightness"], _BRIGHTNESS_EDGES)],
        "contrast": [LEVELS[i] for i in _bucket(m["contrast"], _CONTRAST_EDGES)],
        "stroke": [STROKES[i] for i in _bucket(m["stroke"], _STROKE_EDGES)],
        "size": [SIZES[i] for i in _bucket(m["extent"], _SIZE_EDGES)],
        "position": [_position(cx, cy) for cx, cy in zip(_bucket(m["centre"][:, 0], _SIDE_EDGES),
                                                          _bucket(m["centre"][:, 1], _SIDE_EDGES), strict=True)],
    }
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def phrase(word: dict[str, str], blank: bool) -> str:
    """One image's attribute words as caption text."""
    if blank:
        return f"blank {word['background']} background, {word['brightness']} brightness"
    return (f"{word['ink']} ink on {word['background']}, {word['stroke']} strokes, "
            f"{word['size']}, {word['position']}, {word['contrast']} contrast, "
            f"{word['brightness']} brightness")


_EMPTY = "\x00"  # stands for empty attributes while a template is filled


def _fill(template: str, **fields: str) -> str:
    """Fill the template; empty ``attributes`` leave no dangling separator behind."""
    if fields.get("attributes"):
        return template.format(**fields)
    text = template.format(**{**fields, "attributes": _EMPTY})
    text = re.sub(r"\s*[(\[]\s*\x00\s*[)\]]", "", text)
    text = re.sub(r"^\s*\x00\s*[,;:/|]?\s*", "", text)
    text = re.sub(r"\s*[,;:/|]?\s*\x00", "", text)
    return text.strip()


class TemplateCaptioner:
    """Captions from the label (or a prediction), measured pixel attributes and domain.

    E.g. "a handwritten digit seven, white ink on black, thick strokes, large, centred,
    high contrast, low brightness, domain digits".

    Options: ``template`` uses the fields {description}, {label}, {domain} and
    {attributes} ({label} is required); ``attributes=false`` leaves the measured
    attributes out. Unlabelled images are described by the classifier's prediction and
    its confidence when a classifier is given ("(probably seven, p=0.93)"), otherwise as
    of unknown class. Prompts (no images) have no attributes. Deterministic: the same
    images, labels and classifier give the same captions.
    """

    def __init__(self, template: str = DEFAULT_TEMPLATE, attributes: bool = True) -> None:
        fields = _check_template(template)
        self.template = template
        # Nothing to measure when the template does not show the attributes.
        self.use_attributes = bool(attributes) and "attributes" in fields

    def attributes(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: the words used in captions and the measured numbers behind them
        (colours as RGB in [0, 1], fractions of the image side, etc.), JSON-ready."""
        m = measure(images)
        rows = []
        for i, word in enumerate(words(m)):
            blank = bool(m["blank"][i])
            rows.append({
                "text": phrase(word, blank),
                "blank": blank,
                "ink": None if blank else word["ink"],
                "background": word["background"],
                "ink_rgb": _round(m["ink_rgb"][i]),
                "background_rgb": _round(m["background_rgb"][i]),
                "brightness": word["brightness"],
                "brightness_value": _round(m["brightness"][i]),
                "contrast": word["contrast"],
                "contrast_value": _round(m["contrast"][i]),
                "ink_fraction": _round(m["ink_fraction"][i]),
                "stroke": None if blank else word["stroke"],
                "stroke_px": _round(m["stroke_px"][i]),
                "stroke_fraction": _round(m["stroke"][i]),
                "size": None if blank else word["size"],
                "extent": _round(m["extent"][i]),
                "position": None if blank else word["position"],
                "centre": _round(m["centre"][i]),
                "box": _round(m["box"][i]),
            })
        return rows

    def caption(self, images: torch.Tensor | None,
                labels: Sequence[int] | torch.Tensor | None = None,
                *, class_names: Sequence[str], domain: str, description: str = "",
                classifier: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[str]:
        if images is None and labels is None:
            raise ValueError("caption() needs images, labels or both")
        description = description or "picture of"
        if labels is not None:
            labels = labels.tolist() if isinstance(labels, torch.Tensor) else labels
            texts = [class_names[int(y)] for y in labels]
        elif classifier is not None:
            assert images is not None  # labels is None here, so images is not (see above)
            proba = classifier(images)
            conf, pred = proba.max(1)
            texts = [f"(probably {class_names[p]}, p={c:.2f})"
                     for p, c in zip(pred.tolist(), conf.tolist(), strict=True)]
        else:
            assert images is not None  # labels is None here, so images is not (see above)
            texts = ["of unknown class"] * len(images)
        if images is not None and len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} labels")
        if images is not None and self.use_attributes:
            m = measure(images)
            blank = m["blank"].tolist()
            attrs = [phrase(w, b) for w, b in zip(words(m), blank, strict=True)]
        else:
            attrs = [""] * len(texts)
        captions = [_fill(self.template, description=description, label=t, domain=domain,
                          attributes=a) for t, a in zip(texts, attrs, strict=True)]
        # "a picture of" + "of unknown class" (no description given).
        return [c.replace(" of of ", " of ") for c in captions]


def _round(value: torch.Tensor) -> float | list[float]:
    if value.ndim == 0:
        return round(float(value), 4)
    return [round(float(v), 4) for v in value.tolist()]
