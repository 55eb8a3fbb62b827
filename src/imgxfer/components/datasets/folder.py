"""`folder:PATH`: a folder with one sub-folder of images per class (torchvision's
ImageFolder layout). Loading rules are in :mod:`imgxfer.data.files`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgxfer.core.errors import UserError
from imgxfer.data.common import check_n_per_class, per_class_subsample
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.files import ImageOptions, Item, is_hidden, load_items

# Folders that archive tools leave behind and that are never a class.
_IGNORED_FOLDERS = {"__MACOSX"}


def _class_files(folder: Path) -> list[Path]:
    """Non-hidden files below ``folder`` (sub-folders included), sorted by relative path."""
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if not any(is_hidden(part) for part in relative) and path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def scan_folder(root: Path, what: str) -> tuple[list[str], list[Item]]:
    """Class names (sorted sub-folder names) and their files, with the user errors for
    layouts that cannot be a dataset."""
    if not root.exists():
        raise UserError(f"{what}: no such folder ({str(root.absolute())!r}).")
    if not root.is_dir():
        raise UserError(f"{what}: this is a file, not a folder with one sub-folder of images "
                        "per class (csv:PATH reads a list of files).")
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except PermissionError:
        raise UserError(f"{what}: the folder cannot be read (permission denied).") from None
    folders = [p for p in entries if p.is_dir() and not is_hidden(p.name)
               and p.name not in _IGNORED_FOLDERS]
    loose = [p for p in entries if p.is_file() and not is_hidden(p.name)]
    if not folders:
        held = f"it holds {len(loose)} files directly" if loose else "it is empty"
        raise UserError(f"{what}: no class sub-folders ({held}); put each class's images in "
                        "a sub-folder named after the class.")
    if len(folders) == 1:
        raise UserError(f"{what}: only one class sub-folder ({folders[0].name!r}); transfer "
                        "needs at least two classes.")
    items: list[Item] = []
    for label, folder in enumerate(folders):
        files = _class_files(folder)
        if not files:
            raise UserError(f"{what}: class folder {folder.name!r} is empty; every class "
                            "needs at least one image.")
        items += [Item(f, label, repr(f.relative_to(root).as_posix())) for f in files]
    return [f.name for f in folders], items


def folder(path: str, *, size: int = 0, channels: int = 0, background: str = "white",
           fit: str = "crop", invert: bool = False, n_per_class: int = 0, seed: int = 0,
           strict: bool = False, domain: str = "", description: str = "",
           stream: str = "auto") -> ImageDataset:
    """Images in PATH/<class>/... (one sub-folder per class, any format Pillow reads).

    Class names are the sub-folder names in sorted order; files are read in sorted order,
    sub-folders of a class folder included; hidden files and folders (starting with '.')
    are ignored, files directly in PATH too. Files are checked when the dataset is made
    (unreadable ones skipped) and decoded when images are asked for. Options: ``size``
    (square side; 0: the run's encoder input size, 32 outside a run), ``stream``
    (``auto``: keep the decoded images in memory when they take at most 512 MB, else read
    them from the files at every use, by ``--workers`` processes; ``always``: read from
    the files; ``never``: keep in memory), ``channels``
    (0: 1 if every image is greyscale else 3), ``background`` (``white`` or ``black``,
    behind transparent pixels), ``fit`` (``crop``, ``pad``, ``stretch`` or ``glyph``: the
    MNIST layout, see :mod:`imgxfer.data.files`), ``invert`` (1 - value: dark ink on
    light paper read as light on dark), ``n_per_class`` (a seeded random subset of files
    per class; 0: all), ``strict`` (refuse unreadable
    files instead of skipping them), ``domain`` (default: the folder's name) and
    ``description`` (words for captions, e.g. "chest x-ray").
    """
    root = Path(path).expanduser()
    what = f"dataset 'folder:{path}'"
    options = ImageOptions(size, channels, background, fit, invert)
    options.check(what)
    check_n_per_class(what, n_per_class)
    class_names, items = scan_folder(root, what)
    keep, notes = per_class_subsample(np.array([i.label for i in items]), n_per_class, seed,
                                      what=f"folder:{path}", class_names=class_names)
    return load_items([items[i] for i in keep], class_names, options,
                      domain=domain or root.resolve().name, description=description,
                      strict=strict, what=what, notes=notes, stream=stream)
