"""Reading images the way `imgxfer caption`, `predict` and `generate --images` take them
(a registered dataset, a folder with one sub-folder per class, a folder of images, one
image file) and writing one output file; shared by those commands."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from imgxfer.core.errors import UnknownComponentError, UserError
from imgxfer.data.dataset import ImageDataset
from imgxfer.plugin.registry import Registry

# What generate writes (000.png, 001.png, ...): only such files are replaced with --force.
SAMPLE_NAME = re.compile(r"\d{3,}\.png")
# The overview generate writes beside the images: not a sample (predict and caption skip it).
GRID_FILE = "grid.png"


def not_samples(paths: Sequence[Path]) -> set[Path]:
    """The files among ``paths`` (one folder's) that generate wrote beside its numbered
    images, when the folder holds such images: a folder of generate's output is read as
    its samples only, while a ``grid.png`` among other images stays an image."""
    if not any(SAMPLE_NAME.fullmatch(p.name) for p in paths):
        return set()
    return {p for p in paths if p.name == GRID_FILE}


# Loose images (no classes) are read at this size, stretched: position and size
# attributes then describe the whole picture, nothing cropped or padded away.
# (Otherwise they are read with ImageOptions' defaults, like `folder:` files.)
LOOSE_OVERRIDES = {"size": 64, "fit": "stretch"}


@dataclass
class ImageInput:
    """Images read for a command: labelled (a dataset) or loose files (``labels`` is None)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str]
    domain: str
    description: str = ""
    # Index of each image in the dataset, or its file path (loose images).
    ids: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The file of each image of a dataset read from files (folder:, csv:).
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = list(range(len(self.images)))

    @property
    def id_key(self) -> str:
        return "index" if self.labels is not None else "path"


def text_path(path: str | Path) -> str:
    """A file path as text any UTF-8 output takes. A file name that is not UTF-8 reaches
    Python with surrogate characters in it (PEP 383), which no UTF-8 file or terminal can
    hold; its undecodable bytes are written as ``\\xNN`` instead, the rest unchanged.
    Every command that writes image paths (predict, explain, caption) goes through here."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_count(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be a positive number of images, got {value}.")


def resolve_out(out: str | Path | None, *, default: str, force: bool = False) -> Path:
    """The file to write: ``out`` itself, or ``out/<default>`` when ``out`` is an existing
    folder (``./<default>`` without ``out``). Refuses a missing folder and an existing
    file (unless ``force``)."""
    text = str(out) if out is not None else default
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / default
    elif text.endswith(("/", os.sep)):
        raise UserError(f"--out {text!r}: no such folder; create it first.")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"--out {text!r}: the folder {str(parent)!r} does not exist; "
                        "create it first.")
    if not parent.is_dir():
        raise UserError(f"--out {text!r}: {str(parent)!r} is a file, not a folder.")
    if path.is_dir():
        raise UserError(f"--out {text!r}: {str(path)!r} is a folder; give a file name.")
    if path.exists() and not force:
        raise UserError(f"{str(path)!r} already exists; use --force to overwrite it.")
    return path


def is_dataset_name(spec: str, registry: Registry) -> bool:
    try:
        registry.get("datasets", spec)
    except UnknownComponentError:
        return False
    return True


def check_source(spec: str, registry: Registry) -> None:
    """Refuse, in one sentence, a name that is neither a dataset nor an existing path."""
    if is_dataset_name(spec, registry) or Path(spec).expanduser().exists():
        return
    names = [n + "<...>" if n.endswith(("/", ":")) else n for n in registry.names("datasets")]
    raise UserError(f"{spec!r} is neither a registered dataset ({', '.join(names)}) nor an "
                    "existing file or folder.")


def from_dataset(data: ImageDataset) -> ImageInput:
    return ImageInput(data.images.tensor(), data.labels, list(data.class_names), data.domain,
                      data.description, notes=list(data.notes), paths=data.paths)


def load_images(spec: str, registry: Registry, options: dict[str, Any] | None = None,
                *, limit: int | None = None) -> ImageInput:
    """A registered dataset name (``digits``, ``folder:PATH``, ``csv:PATH``...) or an
    existing path: a folder with one sub-folder per class (read as ``folder:PATH``), a
    folder of images, or one image file. A registered name wins over a same-named path;
    write ``./NAME`` for the path. ``limit`` stops reading a folder of loose images after
    that many readable ones (a dataset is read whole; :func:`select` cuts it)."""
    options = dict(options or {})
    if is_dataset_name(spec, registry):
        return from_dataset(registry.build("datasets", spec, options))
    check_source(spec, registry)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_loose([path], path.parent, options, what=f"image {spec!r}", single=True)
    from imgxfer.data.files import is_hidden

    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except PermissionError:
        raise UserError(f"folder {spec!r} cannot be read (permission denied).") from None
    folders = [p for p in entries if p.is_dir() and not is_hidden(p.name) and p.name != "__MACOSX"]
    images = [p for p in entries if p.is_file() and not is_hidden(p.name) and _is_image_name(p)]
    grid = not_samples(images)  # generate's grid.png, in a folder of its output
    images = [p for p in images if p not in grid]
    if len(folders) >= 2:
        return from_dataset(registry.build("datasets", f"folder:{spec}", options))
    if images:
        return _load_loose(images, path, options, what=f"folder {spec!r}", limit=limit)
    if folders:
        raise UserError(f"folder {spec!r} holds no images and one sub-folder "
                        f"({folders[0].name!r}); give that sub-folder, or a folder with one "
                        "sub-folder of images per class.")
    raise UserError(f"folder {spec!r} holds no images (and no class sub-folders).")


def _is_image_name(path: Path) -> bool:
    from PIL import Image

    return path.suffix.lower() in Image.registered_extensions()


def _load_loose(paths: Sequence[Path], root: Path, options: dict[str, Any], *,
                what: str, single: bool = False, limit: int | None = None) -> ImageInput:
    """Files without classes, read like ``folder:`` files (see imgxfer.data.files)."""
    from imgxfer.data.files import ImageOptions, Unreadable, read_image

    defaults = {**asdict(ImageOptions()), **LOOSE_OVERRIDES}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"{what}: no option {', '.join(map(repr, unknown))} for loose images; "
                        f"valid options: {', '.join(defaults)}.")
    image_options = ImageOptions(**{**defaults, **options})
    image_options.check(what)
    arrays: list[np.ndarray] = []
    ids: list[str] = []
    skipped: list[str] = []
    for path in paths:
        if limit is not None and len(arrays) >= limit:
            break  # a huge folder is not read whole for its first images
        try:
            arrays.append(read_image(path, image_options))
        except Unreadable as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        ids.append(path.relative_to(root).as_posix())
    if not arrays and single:
        raise UserError(f"{what} cannot be read ({skipped[0].split(': ', 1)[1]}).")
    if not arrays:
        raise UserError(f"{what}: no readable image ({'; '.join(skipped[:3])}).")
    notes = []
    if skipped:
        notes.append(f"{what}: skipped {len(skipped)} unreadable file"
                     f"{'s' if len(skipped) != 1 else ''} ({'; '.join(skipped[:3])}"
                     f"{'; ...' if len(skipped) > 3 else ''}).")
    channels = image_options.channels or (1 if all(a.ndim == 2 for a in arrays) else 3)
    stacked = np.stack([_to_channels(a, channels) for a in arrays])
    return ImageInput(torch.from_numpy(stacked), None, [], root.resolve().name, "",
                      ids=ids, notes=notes)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """[H,W] or [H,W,3] -> [channels,H,W]; colour to grey with the ITU-R 601 weights."""
    if array.ndim == 2:
        return np.repeat(array[None], channels, axis=0)
    if channels == 1:
        return (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
    return cast(np.ndarray, array.transpose(2, 0, 1))


def select(data: ImageInput, *, limit: int | None = None, shots: int | None = None
           ) -> ImageInput:
    """The first ``shots`` images of each class, then the first ``limit`` of those (in
    the input's order; no randomness)."""
    check_count("--limit", limit)
    check_count("--shots", shots)
    index = torch.arange(len(data.images))
    if shots is not None:
        if data.labels is None:
            raise UserError("--shots needs labelled images (a dataset or a folder with one "
                            "sub-folder per class); use --limit for loose images.")
        keep = torch.zeros(len(index), dtype=torch.bool)
        for c in range(len(data.class_names)):
            keep[torch.nonzero(data.labels == c).flatten()[:shots]] = True
        index = index[keep]
    if limit is not None:
        index = index[:limit]
    ids = [data.ids[i] for i in index.tolist()]
    paths = None if data.paths is None else [data.paths[i] for i in index.tolist()]
    labels = data.labels[index] if data.labels is not None else None
    return ImageInput(data.images[index], labels, data.class_names, data.domain,
                      data.description, ids=ids, notes=data.notes, paths=paths)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically (a reader never sees half a file)."""
    from imgxfer.core.runfolder import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def parse_options(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    from imgxfer.core.config import parse_option

    return dict(parse_option(pair, flag) for pair in pairs)
