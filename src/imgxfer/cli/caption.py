"""`imgxfer caption`: caption a dataset, a folder of images or one image into a JSONL file.

The steps are library functions, so the command is reachable from Python too::

    images = load_images("digits", registry)            # or a path
    images = select(images, limit=20)
    rows = caption_rows(registry.build("captioners", "template"), images)
    write_jsonl(resolve_out("captions.jsonl", default="captions.jsonl"), rows)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from imgxfer.cli.context import current_registry
from imgxfer.cli.inputs import (
    ImageInput,
    check_count,
    check_source,
    load_images,
    parse_options,
    resolve_out,
    select,
    text_path,
    write_jsonl,
)
from imgxfer.cli.options import dataset_opt_option, force_option, limit_option, out_option

DEFAULT_OUT = "captions.jsonl"


def _absolute_root(source: str) -> Path | None:
    """The absolute folder loose files of ``source`` were found in (``None`` for a dataset
    name): captions.jsonl then names each file wholly, as predict's CSV does, not
    relative to a folder the file does not record."""
    given = Path(source).expanduser()
    if not given.exists():
        return None
    return (given if given.is_dir() else given.parent).absolute()


def caption_rows(captioner: Any, data: ImageInput,
                 root: Path | None = None) -> list[dict[str, Any]]:
    """One JSON-ready row per image: index (datasets, with the file's path when read from
    files) or path (loose files: under ``root``, the folder they were found in, when
    given), label when known, caption, and the measured attributes when the captioner
    offers ``attributes()``."""
    captions = captioner.caption(data.images, data.labels, class_names=data.class_names,
                                 domain=data.domain, description=data.description)
    from imgxfer.plugin.protocols import declared

    measure = declared(captioner, "attributes", "captioners")
    attributes = measure(data.images) if measure is not None else None
    rows = []
    for i, text in enumerate(captions):
        loose = data.id_key == "path"  # a file's path, which may not be UTF-8
        where = root / data.ids[i] if loose and root is not None else data.ids[i]
        row: dict[str, Any] = {data.id_key: text_path(where) if loose else where}
        if data.paths is not None:
            row["path"] = text_path(data.paths[i])
        if data.labels is not None:
            row["label"] = data.class_names[int(data.labels[i])]
        row["caption"] = text
        if attributes is not None:
            row["attributes"] = attributes[i]
        rows.append(row)
    return rows


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
    check_count("--limit", limit)
    check_count("--shots", shots)
    registry = current_registry()
    check_source(source, registry)
    path = resolve_out(out, default=DEFAULT_OUT, force=force)
    # Built before any image is read, so a typo fails at once.
    model = registry.build("captioners", captioner, parse_options(captioner_opt, "--captioner-opt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_images(source, registry, parse_options(dataset_opt, "--dataset-opt"),
                           limit=limit)
    # Unreadable files are both warned about and noted: say it once.
    messages = list(data.notes) + [str(w.message) for w in caught]
    for message in dict.fromkeys(messages):
        click.echo(f"warning: {message}", err=True)
    data = select(data, limit=limit, shots=shots)
    rows = caption_rows(model, data, _absolute_root(source))
    write_jsonl(path, rows)
    click.echo(f"wrote {len(rows)} caption{'s' if len(rows) != 1 else ''} of {source!r} "
               f"to {path}", err=True)
