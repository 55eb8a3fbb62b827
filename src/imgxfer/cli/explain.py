"""`imgxfer explain`: where a run's classifier looks when it classifies images.

    imgxfer explain photos/ --from runs/20250101-120000-mnist --out maps/

loads the run's classifier and reads the images exactly as `imgxfer predict` does
(:func:`imgxfer.cli.predict.load_classifier`, :func:`~imgxfer.cli.predict.
read_as_run_did`), computes a class-activation map of each image for its predicted class
(or ``--class``) with :func:`imgxfer.tasks.classify.saliency.explain`, and writes into the ``--out``
folder one PNG per image (the image beside its map laid over it) and ``explanations.csv``:
predict's columns plus the ``explained`` class and the ``map`` file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from imgxfer.cli.context import current_registry
from imgxfer.cli.options import dataset_opt_option, force_option, from_run, limit_option
from imgxfer.core.errors import UserError
from imgxfer.tasks.classify.saliency import DEFAULT_METHOD, METHODS

DEFAULT_OUT = "explanations"
CSV_FILE = "explanations.csv"
MAP_SIZE = 128  # each half of a written PNG is enlarged to about this many pixels


def parse_class(value: str | None, class_names: Sequence[str]) -> int | None:
    """``--class``: a class index or one of the run's class names (None: predicted)."""
    if value is None:
        return None
    if value in class_names:
        return list(class_names).index(value)
    if re.fullmatch(r"-?\d+", value.strip()):
        index = int(value)
        if 0 <= index < len(class_names):
            return index
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(class_names[:12]))
    more = ", ..." if len(class_names) > 12 else ""
    raise UserError(f"--class {value!r} is not a class of the run; give an index from 0 to "
                    f"{len(class_names) - 1} or a name ({shown}{more}).")


def prepare_out(out: str | None, force: bool) -> Path:
    """The folder to write into: created when missing (its parent must exist); an existing
    one must not hold an earlier explanations.csv unless ``force``."""
    folder = Path(out or DEFAULT_OUT).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {str(folder)!r} is a file; give a folder for the maps.")
    if not folder.exists() and not folder.parent.is_dir():
        raise UserError(f"--out {str(folder)!r}: the folder {str(folder.parent)!r} does not "
                        "exist; create it first.")
    if (folder / CSV_FILE).exists() and not force:
        raise UserError(f"{str(folder)!r} already holds {CSV_FILE}; use --force to overwrite "
                        "it, or choose another --out folder.")
    return folder


def map_name(k: int, row: dict[str, Any]) -> str:
    """A PNG name that keeps input order and, for files, says which image it is."""
    stem = Path(str(row["path"])).stem if "path" in row else f"index{row['index']}"
    return f"{k:04d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:60]}.png"


def write_maps(folder: Path, images: Any, explanation: Any, rows: list[dict[str, Any]],
               class_names: Sequence[str]) -> None:
    """One PNG per image (the image, then its map over it) and the CSV, atomically."""
    import io

    import numpy as np
    from PIL import Image

    from imgxfer.cli.predict import csv_text
    from imgxfer.core.runfolder import atomic_write_bytes, atomic_write_text
    from imgxfer.tasks.classify.saliency import overlay, rgb

    folder.mkdir(exist_ok=True)
    for k, row in enumerate(rows):
        heat = overlay(images[k], explanation.maps[k], min_size=MAP_SIZE)
        plain = np.asarray(Image.fromarray(rgb(images[k])).resize(
            (heat.shape[1], heat.shape[0]), Image.Resampling.NEAREST))
        gap = np.full((heat.shape[0], 4, 3), 255, np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([plain, gap, heat], axis=1)).save(buffer, format="PNG")
        row["explained"] = class_names[explanation.explained[k]]
        row["map"] = map_name(k, row)
        atomic_write_bytes(folder / row["map"], buffer.getvalue())
    atomic_write_text(folder / CSV_FILE, csv_text(rows))


@click.command("explain", short_help="Heat maps of where a run's classifier looks.")
@click.argument("source", metavar="PATH_OR_DATASET")
@from_run
@click.option("--method", default=DEFAULT_METHOD, show_default=True,
              type=click.Choice(list(METHODS)),
              help="How the map is computed (pytorch-grad-cam); eigencam ignores the class.")
@click.option("--class", "class_", metavar="K",
              help="Explain this class (index or name) for every image, instead of the "
                   "predicted one.")
@click.option("--target-layer", metavar="NAME",
              help="Read the map from this layer of the classifier, e.g. encoder.features "
                   "(default: the last one with a spatial map, the last conv block).")
@click.option("--out", "-o", metavar="DIR",
              help=f"Folder for the PNGs and {CSV_FILE} (created; default ./{DEFAULT_OUT}).")
@limit_option("Explain")
@dataset_opt_option
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@force_option
def explain_command(source: str, run: str, adapter: str | None, method: str,
                    class_: str | None, target_layer: str | None, out: str | None,
                    limit: int | None, dataset_opt: tuple[str, ...], device: str,
                    force: bool) -> None:
    """Show where a run's classifier looks: a heat map over each image for the class it
    predicts (or --class), as PNGs plus a CSV of the class and confidence.

    PATH_OR_DATASET is what `imgxfer predict` reads (a registered dataset, a folder with
    one sub-folder per class, a folder of images or one image file), read the same way.
    Red marks the regions that raised the score of the explained class most; each map is
    scaled to its own maximum, so compare where maps are red, not how red. Each PNG
    shows the image and, beside it, its map laid over it; explanations.csv has one row
    per image: predict's columns (path or index, predicted, confidence, label), the
    explained class and the PNG's name.

    \b
    Examples:
      imgxfer explain photos/ --from runs/20250101-120000-syndigits-to-mnist
      imgxfer explain digits --from RUN --adapter dann --limit 20 --class 3 --out maps
    """
    from imgxfer.cli.inputs import check_count, check_source, parse_options
    from imgxfer.cli.predict import load_classifier, prediction_rows, read_as_run_did
    from imgxfer.cli.predict_dense import is_dense_run
    from imgxfer.tasks.classify.plan import resolve_device
    from imgxfer.tasks.classify.saliency import explain, find_target_layer

    check_count("--limit", limit)
    if is_dense_run(run):
        raise UserError("imgxfer explain shows where a classifier looks; a segmentation or "
                        "detection run's masks and boxes already say where: see `imgxfer "
                        "predict` and the run's predictions.png.")
    registry = current_registry()
    check_source(source, registry)
    target_device = resolve_device(device)
    options = parse_options(dataset_opt, "--dataset-opt")
    loaded = load_classifier(run, adapter, registry)  # before any image is read
    explained = parse_class(class_, loaded.class_names)
    model = loaded.model.to(target_device)
    layer = find_target_layer(model, target_layer)
    folder = prepare_out(out, force)  # last among the checks, as in predict
    images = read_as_run_did(source, loaded, registry, options, limit=limit)
    data = images.data
    classes = None if explained is None else [explained] * len(data.images)
    result = explain(model, data.images, classes, method=method, layer=layer)
    rows = prediction_rows(data, result.proba, loaded.class_names, images.root, images.renamed)
    write_maps(folder, data.images, result, rows, loaded.class_names)
    click.echo(f"wrote {len(rows)} map{'s' if len(rows) != 1 else ''} ({method}, layer "
               f"{layer}) of {loaded.adapter!r} ({loaded.path}) and {CSV_FILE} to {folder}",
               err=True)
