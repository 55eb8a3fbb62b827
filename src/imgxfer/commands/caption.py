"""`imgxfer caption`: caption a dataset, a folder of images or one image into a JSONL file.

The steps are library functions, so the command is reachable from Python too::

    images = load_images("digits", registry)            # or a path
    images = select(images, limit=20)
    rows = caption_rows(registry.build("captioners", "template"), images)
    write_jsonl(resolve_out("captions.jsonl"), rows)
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np
import torch

from imgxfer.commands.options import dataset_opt_option, force_option, limit_option, out_option
from imgxfer.data import ImageDataset
from imgxfer.errors import UnknownComponentError, UserError
from imgxfer.registry import Registry

DEFAULT_OUT = "captions.jsonl"
# Loose images (no classes) are read at this size, stretched: position and size
# attributes then describe the whole picture, nothing cropped or padded away.
# (Otherwise they are read with ImageOptions' defaults, like `folder:` files.)
LOOSE_OVERRIDES = {"size": 64, "fit": "stretch"}


@dataclass
class CaptionInput:
    """Images to caption: labelled (a dataset) or loose files (``labels`` is None)."""

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


def check_count(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be a positive number of images, got {value}.")


def resolve_out(out: str | Path | None, *, force: bool = False,
                default: str = DEFAULT_OUT) -> Path:
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


def _is_dataset_name(spec: str, registry: Registry) -> bool:
    try:
        registry.get("datasets", spec)
    except UnknownComponentError:
        return False
    return True


def check_source(spec: str, registry: Registry) -> None:
    """Refuse, in one sentence, a name that is neither a dataset nor an existing path."""
    if _is_dataset_name(spec, registry) or Path(spec).expanduser().exists():
        return
    names = [n + "<...>" if n.endswith(("/", ":")) else n for n in registry.names("datasets")]
    raise UserError(f"{spec!r} is neither a registered dataset ({', '.join(names)}) nor an "
                    "existing file or folder.")


def _from_dataset(data: ImageDataset) -> CaptionInput:
    return CaptionInput(data.images, data.labels, list(data.class_names), data.domain,
                        data.description, notes=list(data.notes), paths=data.paths)


def load_images(spec: str, registry: Registry, options: dict[str, Any] | None = None,
                *, limit: int | None = None) -> CaptionInput:
    """A registered dataset name (``digits``, ``folder:PATH``, ``csv:PATH``...) or an
    existing path: a folder with one sub-folder per class (read as ``folder:PATH``), a
    folder of images, or one image file. A registered name wins over a same-named path;
    write ``./NAME`` for the path. ``limit`` stops reading a folder of loose images after
    that many readable ones (a dataset is read whole; :func:`select` cuts it)."""
    options = dict(options or {})
    if _is_dataset_name(spec, registry):
        return _from_dataset(registry.build("datasets", spec, options))
    check_source(spec, registry)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_loose([path], path.parent, options, what=f"image {spec!r}", single=True)
    from imgxfer.datasets.files import is_hidden

    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except PermissionError:
        raise UserError(f"folder {spec!r} cannot be read (permission denied).") from None
    folders = [p for p in entries if p.is_dir() and not is_hidden(p.name) and p.name != "__MACOSX"]
    images = [p for p in entries if p.is_file() and not is_hidden(p.name) and _is_image_name(p)]
    from imgxfer.commands.generate import not_samples

    grid = not_samples(images)  # generate's grid.png, in a folder of its output
    images = [p for p in images if p not in grid]
    if len(folders) >= 2:
        return _from_dataset(registry.build("datasets", f"folder:{spec}", options))
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
                what: str, single: bool = False, limit: int | None = None) -> CaptionInput:
    """Files without classes, read like ``folder:`` files (see imgxfer.datasets.files)."""
    from imgxfer.datasets.files import ImageOptions, Unreadable, read_image

    defaults = {**asdict(ImageOptions()), **LOOSE_OVERRIDES}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"{what}: no option {', '.join(map(repr, unknown))} for loose images; "
                        f"valid options: {', '.join(defaults)}.")
    image_options = ImageOptions(**{**defaults, **options})
    image_options.check(what)
    arrays, ids, skipped = [], [], []
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
    return CaptionInput(torch.from_numpy(stacked), None, [], root.resolve().name, "",
                        ids=ids, notes=notes)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """[H,W] or [H,W,3] -> [channels,H,W]; colour to grey with the ITU-R 601 weights."""
    if array.ndim == 2:
        return np.repeat(array[None], channels, axis=0)
    if channels == 1:
        return (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
    return array.transpose(2, 0, 1)


def select(data: CaptionInput, *, limit: int | None = None, shots: int | None = None
           ) -> CaptionInput:
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
    return CaptionInput(data.images[index], labels, data.class_names, data.domain,
                        data.description, ids=ids, notes=data.notes, paths=paths)


def caption_rows(captioner: Any, data: CaptionInput) -> list[dict[str, Any]]:
    """One JSON-ready row per image: index (datasets, with the file's path when read from
    files) or path (loose files), label when known, caption, and the measured attributes
    when the captioner offers ``attributes()``."""
    captions = captioner.caption(data.images, data.labels, class_names=data.class_names,
                                 domain=data.domain, description=data.description)
    from imgxfer.protocols import declared

    measure = declared(captioner, "attributes", "captioners")
    attributes = measure(data.images) if measure is not None else None
    rows = []
    for i, text in enumerate(captions):
        row: dict[str, Any] = {data.id_key: data.ids[i]}
        if data.paths is not None:
            row["path"] = data.paths[i]
        if data.labels is not None:
            row["label"] = data.class_names[int(data.labels[i])]
        row["caption"] = text
        if attributes is not None:
            row["attributes"] = attributes[i]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically (a reader never sees half a file)."""
    from imgxfer.runfolder import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _options(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    from imgxfer.config import parse_option

    return dict(parse_option(pair, flag) for pair in pairs)


@click.command("caption", short_help="Caption images into a JSONL file.")
@click.argument("source", metavar="PATH_OR_DATASET")
@out_option(f"JSONL file to write, or an existing folder to write {DEFAULT_OUT} into "
            f"(default ./{DEFAULT_OUT}).")
@limit_option("Caption")
@click.option("--shots", type=int, metavar="N",
              help="Caption only the first N images of each class (labelled input).")
@click.option("--captioner", default="template", show_default=True,
              help="Captioner (see `imgxfer list captioners`).")
@click.option("--captioner-opt", multiple=True, metavar="KEY=VALUE",
              help="Option for the captioner, e.g. attributes=false (repeatable).")
@dataset_opt_option
@force_option
def caption(source: str, out: str | None, limit: int | None, shots: int | None,
            captioner: str, captioner_opt: tuple[str, ...], dataset_opt: tuple[str, ...],
            force: bool) -> None:
    """Caption images and write one JSON object per image to a JSONL file.

    PATH_OR_DATASET is a registered dataset (digits, syndigits, folder:PATH, csv:PATH;
    see `imgxfer list datasets`), a folder with one sub-folder of images per class, a
    folder of images, or one image file. Each line holds the image's index (datasets)
    or path (files), its label when known, the caption and the measured attributes.

    \b
    Examples:
      imgxfer caption digits --shots 2
      imgxfer caption photos/ --out photos/captions.jsonl --force
      imgxfer caption scan.png --captioner-opt attributes=false
    """
    from imgxfer.plugins import get_registry

    check_count("--limit", limit)
    check_count("--shots", shots)
    registry = get_registry()
    check_source(source, registry)
    path = resolve_out(out, force=force)
    # Built before any image is read, so a typo fails at once.
    model = registry.build("captioners", captioner, _options(captioner_opt, "--captioner-opt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_images(source, registry, _options(dataset_opt, "--dataset-opt"),
                           limit=limit)
    # Unreadable files are both warned about and noted: say it once.
    messages = list(data.notes) + [str(w.message) for w in caught]
    for message in dict.fromkeys(messages):
        click.echo(f"warning: {message}", err=True)
    data = select(data, limit=limit, shots=shots)
    rows = caption_rows(model, data)
    write_jsonl(path, rows)
    click.echo(f"wrote {len(rows)} caption{'s' if len(rows) != 1 else ''} of {source!r} "
               f"to {path}", err=True)
