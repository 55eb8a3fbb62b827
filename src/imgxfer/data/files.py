"""Reading labelled image files (any format Pillow reads) into an :class:`ImageDataset`;
shared by the ``folder:`` and ``csv:`` datasets.

Each image is decoded with Pillow, turned upright by its EXIF orientation, brought to
``size`` x ``size`` (``fit``: ``crop`` scales the short side to ``size`` and crops the
centre, ``pad`` scales the long side and pads with the background, ``stretch`` ignores the
aspect ratio, ``glyph`` puts handwriting and other glyphs into the MNIST layout of the
built-in digit datasets, see below) and converted to floats in [0, 1]:

- transparency (RGBA, LA, palette images with a transparent colour) is composited onto
  the ``background`` colour, ``white`` by default (what an image viewer shows) or
  ``black`` (for white-ink-on-transparent images);
- 16-bit and 32-bit greyscale images (medical scans, TIFF) keep their range: ``I;16``
  is divided by 65,535, ``I`` by 65,535 when it exceeds 255 and by 255 otherwise, and
  float images are clipped to [0, 1] when their maximum is at most 1, else divided by
  255;
- ``channels=0`` (auto) gives 1 channel when every image is greyscale (a greyscale
  mode, or colour channels that differ by at most 2/255 anywhere) and 3 otherwise;
  ``channels=1`` converts colour with the ITU-R 601 luma weights (as Pillow's "L"),
  ``channels=3`` repeats grey;
- ``invert=True`` turns every value v into 1 - v (dark ink on light paper becomes
  light ink on dark, like MNIST);
- ``fit=glyph``, last: the ink (where the value, after ``invert``, exceeds 0.2) is cut
  out by its bounding box, scaled to 20/28 of ``size`` and centred by its centre of mass
  (:func:`imgxfer.data.layout.fit_to_box`), so scans of digits or letters look like
  ``digits``/``mnist`` images; the dataset's ``layout`` is then ``"glyph"``.

A file that Pillow cannot read (not an image, corrupt, truncated) is skipped: the count
and a few names go into the dataset's ``notes`` (shown in the run report) and a warning;
with ``strict=True`` the first such file is refused with a :class:`UserError` instead.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imgxfer.core.errors import UserError, one_line
from imgxfer.data.common import check_choice, check_size
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.images import CHUNK, ImageStore, TensorImages, usable_cores
from imgxfer.data.layout import GLYPH, fit_to_box

FITS = ("crop", "pad", "stretch", GLYPH)
_GLYPH_THRESHOLD = 0.2  # ink, after invert: above the paper's grain in scans
BACKGROUNDS = {"white": 255, "black": 0}
# Two 8-bit levels of difference between colour channels still count as grey (JPEG).
_GREY_TOLERANCE = 2.5 / 255
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SHOWN = 3  # unreadable files named in a note
_CHECK_SIZE = 16  # the loading check decodes each file at about this size (fast)
DEFAULT_SIZE = 32  # the side files are read at before a run chooses its encoder's
AUTO = "auto"
STREAM_CHOICES = (AUTO, "always", "never")
# stream=auto: a dataset that takes at most this much memory once decoded (8-bit) is kept
# in memory, so small folders are decoded once rather than at every epoch.
IN_MEMORY_MB = 512


@dataclass(frozen=True)
class ImageOptions:
    """How files become arrays; checked once, before any file is read."""

    size: int = 0  # 0: the run's encoder input size (DEFAULT_SIZE outside a run)
    channels: int = 0
    background: str = "white"
    fit: str = "crop"
    invert: bool = False

    def check(self, what: str) -> None:
        if self.size != 0:  # 0: as the encoder asks
            check_size(what, self.size)
        if not isinstance(self.invert, bool):
            raise UserError(f"{what}: option invert must be true or false, got {self.invert!r}.")
        if self.channels not in (0, 1, 3):
            raise UserError(f"{what}: option channels must be 0 (auto), 1 or 3, got {self.channels}.")
        check_choice(what, "background", self.background, list(BACKGROUNDS))
        check_choice(what, "fit", self.fit, FITS)


@dataclass(frozen=True)
class Item:
    """One labelled file; ``shown`` is how messages name it (relative path, CSV row)."""

    path: Path
    label: int
    shown: str


class Unreadable(Exception):
    """A file Pillow could not decode; the message says why."""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def decode(path: Path, size: int = 0) -> Image.Image:
    """One file as Pillow decodes it (upright by its EXIF orientation), or
    :class:`Unreadable` with the reason: damaged data, a foreign format, or a
    decompression bomb (more pixels than Pillow's limit). Every command that opens a
    user's image file goes through here, so each refuses the same files the same way.
    ``size`` > 0 lets a JPEG decode at a reduced scale that is still at least that."""
    try:
        with Image.open(path) as image:
            if size > 0:  # JPEG can decode at 1/2, 1/4 or 1/8 scale; stays >= size.
                image.draft(None, (size, size))
            image.load()
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise Unreadable("not an image format Pillow reads") from None
    except Image.DecompressionBombError as exc:
        raise Unreadable(one_line(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
            struct.error, MemoryError) as exc:  # what Pillow's decoders raise on damaged data
        raise Unreadable(one_line(exc)) from None


def _flatten(image: Image.Image, background: int) -> Image.Image:
    """Any mode -> "L" (8-bit grey), "F" (grey in [0, 1]) or "RGB"."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if mode.startswith("I;16") or (mode.startswith("I") and array.max(initial=0) > 255):
            array = array / 65535.0
        elif mode.startswith("I") or array.max(initial=0) > 1:
            array = array / 255.0
        return Image.fromarray(np.clip(array, 0, 1).astype(np.float32), mode="F")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        grey = mode in ("LA", "La") or (mode == "L")
        canvas = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        flat = Image.alpha_composite(canvas, rgba).convert("RGB")
        return flat.convert("L") if grey else flat
    if mode in ("1", "L"):
        return image.convert("L")
    return image.convert("RGB")


def _fit(image: Image.Image, options: ImageOptions, background: int) -> Image.Image:
    target = (options.size, options.size)
    method = Image.Resampling.BILINEAR
    if options.fit == "stretch":
        return image.resize(target, method)
    if options.fit == "crop":
        return ImageOps.fit(image, target, method)
    if options.fit == GLYPH:  # laid out after invert (read_image); only bound the work here
        image.thumbnail((4 * options.size,) * 2, method)
        return image
    colour: float | int | tuple[int, ...] = background
    if image.mode == "F":
        colour = background / 255.0
    elif image.mode == "RGB":
        colour = (background,) * 3
    # Pillow's annotations leave out the float fill of mode "F" images, which it accepts.
    return ImageOps.pad(image, target, method, color=colour)  # type: ignore[arg-type]


def read_image(path: Path, options: ImageOptions) -> np.ndarray:
    """One file -> float32 [size, size] (grey) or [size, size, 3] (colour) in [0, 1].
    Raises :class:`Unreadable` for a file Pillow cannot decode. Size 0 reads at
    :data:`DEFAULT_SIZE`."""
    options = options if options.size else replace(options, size=DEFAULT_SIZE)
    background = BACKGROUNDS[options.background]
    image = decode(path, options.size)
    try:
        image = _flatten(image, background)
    except ValueError as exc:  # a mode Pillow cannot convert (HSV, LAB...)
        raise Unreadable(f"image mode {image.mode} is not supported ({one_line(exc)})") from None
    image = _fit(image, options, background)
    array = np.asarray(image, dtype=np.float32)
    if image.mode != "F":
        array = array / 255.0
    if array.ndim == 3 and np.abs(array - array[..., :1]).max() <= _GREY_TOLERANCE:
        array = array @ _LUMA  # colour mode, grey content
    array = np.clip(array, 0, 1)
    array = 1 - array if options.invert else array
    if options.fit == GLYPH:
        chw = torch.from_numpy(np.atleast_3d(array)).permute(2, 0, 1)  # [H,W(,3)] -> [C,H,W]
        boxed = fit_to_box(chw[None], canvas=options.size, threshold=_GLYPH_THRESHOLD)[0]
        array = boxed.permute(1, 2, 0).numpy()
        array = array[..., 0] if array.shape[2] == 1 else array
    return array


def _threads() -> int:
    return max(1, min(8, usable_cores()))


def _check(path: Path, options: ImageOptions) -> bool | str:
    """Decode a file at a small size (JPEG at 1/8 scale: the whole stream is still read, so
    truncated and corrupt files are found) and say whether it is greyscale (``True``),
    colour (``False``) or unreadable (the reason)."""
    try:
        small = read_image(path, replace(options, size=_CHECK_SIZE,
                                         fit="stretch" if options.fit == GLYPH else options.fit))
    except Unreadable as exc:
        return str(exc)
    return small.ndim == 2


def load_items(items: Sequence[Item], class_names: Sequence[str], options: ImageOptions, *,
               domain: str, description: str, strict: bool, what: str,
               notes: Sequence[str] = (), stream: str = AUTO) -> ImageDataset:
    """Check ``items`` (skipping or, if ``strict``, refusing unreadable files) and make a
    dataset of the readable ones, read when needed (:class:`FileImages`); every class must
    keep at least one image."""
    options.check(what)
    check_choice(what, "stream", stream, STREAM_CHOICES)

    def check(item: Item) -> bool | str:
        result = _check(item.path, options)
        if strict and isinstance(result, str):
            raise UserError(f"{what}: cannot read image {item.shown} ({result}); remove or "
                            "fix it, or leave out strict=true to skip unreadable files.")
        return result

    # Pillow releases the GIL while decoding, so threads help on several cores.
    pool = ThreadPoolExecutor(_threads())
    try:
        results = list(pool.map(check, items))
    finally:  # after a strict refusal, don't decode the rest
        pool.shutdown(wait=True, cancel_futures=True)
    kept = [item for item, r in zip(items, results, strict=True) if not isinstance(r, str)]
    skipped = [(item, r) for item, r in zip(items, results, strict=True) if isinstance(r, str)]
    notes = list(notes)
    if skipped:
        examples = "; ".join(f"{item.shown}: {reason}" for item, reason in skipped[:_SHOWN])
        more = f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        message = (f"{what}: skipped {len(skipped)} of {len(items)} files that are not "
                   f"readable images ({examples}{more}).")
        notes.append(message)
        warnings.warn(message, stacklevel=3)
    labels = np.array([item.label for item in kept], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    for c, name in enumerate(class_names):
        if counts[c] == 0:
            lost = sum(1 for item, _ in skipped if item.label == c)
            raise UserError(f"{what}: class {name!r} has no readable images ({lost} "
                            f"unreadable file{'s' if lost != 1 else ''} skipped); every class "
                            "needs at least one.")
    channels = options.channels or (1 if all(r is True for r in results if not isinstance(r, str))
                                    else 3)
    store = FileImages([item.path for item in kept], [item.shown for item in kept], options,
                       channels, what=what, stream=stream)
    return ImageDataset(store, torch.from_numpy(labels), list(class_names),
                        domain, description=description, notes=notes,
                        paths=[str(item.path) for item in kept],
                        layout=GLYPH if options.fit == GLYPH else "")


class FileImages(ImageStore):
    """Image files read when a batch is asked for, at ``options.size`` (0: not chosen yet,
    read at :data:`DEFAULT_SIZE`; a run reads them at its encoder's input size through
    :meth:`at_size`). ``stream``: ``auto`` keeps them in memory once sized when they take at
    most :data:`IN_MEMORY_MB` (:meth:`settle`), ``always`` reads from the files at every
    use, ``never`` keeps them in memory."""

    streamed = True

    def __init__(self, paths: Sequence[Path] | np.ndarray, shown: Sequence[str] | np.ndarray,
                 options: ImageOptions, channels: int, *, what: str,
                 stream: str = AUTO) -> None:
        # NumPy string arrays, not lists of Python objects: a DataLoader worker reading a
        # list touches each object's reference count, which copies the parent's memory
        # pages into the worker (copy-on-write) until it holds its own copy of the list.
        self.paths = np.array([str(p) for p in paths], dtype=str)
        self.shown = np.array(list(shown), dtype=str)
        self.options = options
        self.channels_, self.what, self.stream = channels, what, stream

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> int:
        return self.options.size or DEFAULT_SIZE

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.channels_, self.size, self.size)

    def read(self, row: int) -> np.ndarray:
        """One image as float32 [C, H, W]; a file that no longer decodes is one sentence."""
        try:
            array = read_image(Path(self.paths[row]), replace(self.options, size=self.size))
        except (Unreadable, OSError) as exc:
            raise UserError(f"{self.what}: cannot read image {self.shown[row]} ({exc}); it was "
                            "readable when the dataset was loaded: was it changed or removed "
                            "during the run?") from None
        return _to_channels(array, self.channels_)

    def load(self, rows: list[int]) -> torch.Tensor:
        if not rows:
            return torch.empty(0, *self.shape[1:])
        return torch.from_numpy(np.stack([self.read(r) for r in rows]))

    def subset(self, rows: list[int]) -> FileImages:
        return FileImages(self.paths[rows], self.shown[rows],
                          self.options, self.channels_, what=self.what, stream=self.stream)

    def at_size(self, size: int) -> FileImages:
        if self.options.size:  # the user chose the size
            return self
        return FileImages(self.paths, self.shown, replace(self.options, size=size),
                          self.channels_, what=self.what, stream=self.stream)

    def fingerprint(self) -> bytes:
        h = hashlib.sha256(f"{self.options}|{self.channels_}|{self.size}".encode())
        for path in map(Path, self.paths):
            try:
                st = path.stat()
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
        return h.digest()

    def in_memory_bytes(self) -> int:
        return len(self) * self.channels_ * self.size * self.size

    def settle(self) -> ImageStore:
        """This store, or its images decoded into memory (uint8 when every value is a whole
        8-bit level, as for 8-bit files; float32 otherwise, e.g. 16-bit scans), as
        ``stream`` decides."""
        if self.stream == "always" or (self.stream == AUTO
                                     and self.in_memory_bytes() > IN_MEMORY_MB << 20):
            return self
        # Decoded a chunk at a time into the final tensor, so memory peaks at the stored
        # size plus one chunk, not at several float copies of the whole set.
        images = torch.empty(self.shape, dtype=torch.uint8)
        with ThreadPoolExecutor(_threads()) as pool:
            for start in range(0, len(self), CHUNK):
                rows = range(start, min(start + CHUNK, len(self)))
                chunk = torch.from_numpy(np.stack(list(pool.map(self.read, rows))))
                levels = (chunk * 255).round()
                if images.dtype == torch.uint8 and not torch.equal(levels / 255.0, chunk):
                    images = images.float() / 255.0  # not 8-bit (16-bit scans): keep floats
                images[start:start + len(rows)] = (levels if images.dtype == torch.uint8
                                                   else chunk)
        return TensorImages(images)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """[H,W] or [H,W,3] -> [channels,H,W]."""
    if array.ndim == 2:
        return np.repeat(array[None], channels, axis=0)
    if channels == 1:
        return (array @ _LUMA)[None]
    return cast(np.ndarray, array.transpose(2, 0, 1))  # numpy types transpose(*axes) Any
