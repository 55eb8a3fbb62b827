"""`csv:PATH`: a CSV file of ``path,label`` rows naming image files and their classes.
Loading rules are in :mod:`imgxfer.data.files`."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from imgxfer.core.errors import UserError
from imgxfer.data.common import check_n_per_class, per_class_subsample
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.files import ImageOptions, Item, load_items

_PATH_WORDS = {"path", "file", "filename", "file_name", "filepath", "file_path", "image",
               "image_path", "img", "images"}
_LABEL_WORDS = {"label", "labels", "class", "class_name", "classname", "target", "category", "y"}
_SHOWN = 3


def _is_header(row: list[str], folder: Path) -> bool:
    """A first row is a header when it names no existing file and either uses known column
    names or its first cell has no file extension ("path,label", "image,class")."""
    if len(row) != 2 or _resolve(row[0], folder).exists():
        return False
    first, second = row[0].lower(), row[1].lower()
    return (first in _PATH_WORDS and second in _LABEL_WORDS) or "." not in first


def _resolve(cell: str, folder: Path) -> Path:
    path = Path(cell).expanduser()
    return path if path.is_absolute() else folder / path


def _class_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


def read_rows(csv_path: Path, what: str) -> list[tuple[int, str, str]]:
    """(row number, path cell, label cell) for each data row; user errors for a missing or
    unreadable file and for malformed rows (naming the row)."""
    if not csv_path.exists():
        raise UserError(f"{what}: no such file ({str(csv_path.absolute())!r}).")
    if not csv_path.is_file():
        raise UserError(f"{what}: this is a folder, not a CSV file of path,label rows "
                        "(folder:PATH reads one sub-folder per class).")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{what}: the file is not UTF-8 text, so it cannot be a CSV list.") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot read the file ({exc.strerror or exc}).") from None
    rows: list[tuple[int, str, str]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    first = True
    try:
        for cells in reader:
            cells = [c.strip() for c in cells]
            n = reader.line_num
            if not any(cells):
                continue
            if first:
                first = False
                if _is_header(cells, csv_path.parent):
                    continue
            if len(cells) != 2:
                raise UserError(f"{what}: row {n} has {len(cells)} field"
                                f"{'s' if len(cells) != 1 else ''}; every row must be path,label.")
            if not cells[0] or not cells[1]:
                empty = "path" if not cells[0] else "label"
                raise UserError(f"{what}: row {n} has an empty {empty}; every row must be path,label.")
            rows.append((n, cells[0], cells[1]))
    except csv.Error as exc:
        raise UserError(f"{what}: row {reader.line_num} is not valid CSV ({exc}).") from None
    if not rows:
        raise UserError(f"{what}: the file has no path,label rows.")
    return rows


def csv_list(path: str, *, size: int = 0, channels: int = 0, background: str = "white",
             fit: str = "crop", invert: bool = False, n_per_class: int = 0, seed: int = 0,
             strict: bool = False, domain: str = "", description: str = "",
             stream: str = "auto") -> ImageDataset:
    """Images listed in a CSV file as path,label rows (paths relative to the CSV's folder).

    A first row such as ``path,label`` is recognised as a header and skipped. Class names
    are the labels, sorted (numerically when all are numbers). A row whose file does not
    exist is skipped with a note, as are unreadable images; ``strict=true`` refuses them
    instead. A row without exactly two fields or with an empty field is an error naming
    its row number. Other options as for ``folder:`` (``domain`` defaults to the CSV
    file's name without extension).
    """
    csv_path = Path(path).expanduser()
    what = f"dataset 'csv:{path}'"
    options = ImageOptions(size, channels, background, fit, invert)
    options.check(what)
    check_n_per_class(what, n_per_class)
    rows = read_rows(csv_path, what)
    class_names = _class_order({label for _, _, label in rows})
    if len(class_names) < 2:
        raise UserError(f"{what}: every row has label {class_names[0]!r}; transfer needs at "
                        "least two classes.")
    index = {name: i for i, name in enumerate(class_names)}
    items, missing = [], []
    for n, cell, label in rows:
        file = _resolve(cell, csv_path.parent)
        if not file.exists():
            if strict:
                raise UserError(f"{what}: row {n} names {cell!r}, which does not exist "
                                f"(looked for {str(file)!r}).")
            missing.append((n, cell, label))
        else:
            items.append(Item(file, index[label], f"row {n} ({cell!r})"))
    notes = []
    if missing:
        examples = "; ".join(f"row {n}: {cell!r}" for n, cell, _ in missing[:_SHOWN])
        more = f"; and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        notes.append(f"csv:{path}: skipped {len(missing)} of {len(rows)} rows whose file does "
                     f"not exist ({examples}{more}).")
        warnings.warn(notes[-1], stacklevel=2)
    present = {item.label for item in items}
    for name in class_names:
        if index[name] not in present:
            lost = [n for n, _, label in missing if label == name]
            raise UserError(f"{what}: none of the files of class {name!r} exist (rows "
                            f"{', '.join(map(str, lost[:_SHOWN]))}{'...' if len(lost) > _SHOWN else ''}).")
    keep, sub_notes = per_class_subsample(np.array([i.label for i in items]), n_per_class,
                                          seed, what=f"csv:{path}", class_names=class_names)
    return load_items([items[i] for i in keep], class_names, options,
                      domain=domain or csv_path.stem, description=description,
                      strict=strict, what=what, notes=notes + sub_notes, stream=stream)
