"""`imgxfer predict`: classify images with the classifier a run trained.

    imgxfer predict photos/ --from runs/20250101-120000-mnist --out predictions.csv

reads the run folder's ``classifier.safetensors`` (``classifier-<adapter>.safetensors``
after ``--compare``; choose one with ``--adapter``) and its ``config.toml``, rebuilds the
encoder through the plugin registry with the run's options and loads the trained
weights into it, so nothing is downloaded: a run made with ``pretrained=imagenet``
predicts offline. Images come from the same places as in `imgxfer caption`: a registered
dataset, a folder with one sub-folder per class, a folder of images or one image file.

The CSV has one row per image: its ``path`` (files, as the user named the folder) or
``index`` (built-in datasets), the ``predicted`` class, its ``confidence`` (softmax
probability) and, for labelled input, the true ``label`` in the run's spelling of the
class (see :func:`run_class_names`); then the accuracy on the labelled images is
printed. ``--out -`` writes the CSV to standard output.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
import torch

from imgxfer.cli.context import current_registry
from imgxfer.cli.options import dataset_opt_option, force_option, from_run, limit_option, out_option
from imgxfer.core.errors import UserError
from imgxfer.core.runfolder import CLASSIFIER_GLOB, CONFIG
from imgxfer.data.classnames import class_matches
from imgxfer.data.layout import GLYPH
from imgxfer.plugin.protocols import Encoder, encoder_input_size
from imgxfer.plugin.registry import Registry

if TYPE_CHECKING:
    from imgxfer.nn.classifier import Classifier

DEFAULT_OUT = "predictions.csv"
# Images are preprocessed and classified this many at a time: a folder of large photos
# at 224 px would not fit in memory as one tensor.
BATCH = 256


@dataclass
class LoadedClassifier:
    """A run's trained classifier, ready for ``encoder.preprocess``-ed images."""

    model: torch.nn.Module
    class_names: list[str]
    adapter: str
    path: Path
    config: Any  # the run's RunConfig
    metadata: dict[str, str] = field(default_factory=dict)  # the classifier file's


def find_classifier(source: str | Path, adapter: str | None = None) -> tuple[Path, str | None]:
    """The classifier file of a run folder (or the file itself) and the adapter that
    trained it; a --compare run needs ``adapter`` to choose among its classifiers."""
    from imgxfer.core.runfolder import read_metadata

    source = Path(source).expanduser()
    if source.is_file():
        recorded = read_metadata(source).get("adapter")
        if adapter is not None and recorded is not None and recorded != adapter:
            raise UserError(f"{str(source)!r} was trained by {recorded!r}, not {adapter!r}.")
        return source, recorded
    if not source.is_dir():
        raise UserError(f"--from {str(source)!r} does not exist; give a run folder of "
                        "`imgxfer run` or a classifier .safetensors file in one.")
    files = sorted(source.glob(CLASSIFIER_GLOB))
    if not files:
        seeds = sorted(p.name for p in source.glob("seed-*") if p.is_dir())
        if seeds:
            raise UserError(f"{str(source)!r} holds one run per seed ({', '.join(seeds)}); "
                            "give one of those folders.")
        raise UserError(f"the folder {str(source)!r} has no classifier file; give a finished "
                        "run folder of `imgxfer run`.")
    # The adapter a file records, else the one its name gives (classifier-NAME; a
    # damaged file records nothing and is reported when it is read).
    by_adapter = {read_metadata(f).get("adapter") or f.stem.removeprefix("classifier-"): f
                  for f in files}
    if adapter is not None:
        if adapter not in by_adapter:
            raise UserError(f"the run {str(source)!r} has no classifier of adapter {adapter!r}; "
                            f"it has: {', '.join(by_adapter)}.")
        return by_adapter[adapter], adapter
    if len(by_adapter) > 1:
        raise UserError(f"the run {str(source)!r} holds classifiers of several adapters "
                        f"({', '.join(by_adapter)}); choose one with --adapter.")
    (name, path), = by_adapter.items()
    return path, name


def load_classifier(source: str | Path, adapter: str | None, registry: Registry
                    ) -> LoadedClassifier:
    """Rebuild a run's classifier: the encoder from the run's ``config.toml`` (through the
    registry, so a plugin encoder needs its plugin), then the trained weights."""
    from imgxfer.core.config import load
    from imgxfer.core.runfolder import read_tensors
    from imgxfer.nn.classifier import rebuild
    from imgxfer.plugin.provenance import require

    path, adapter = find_classifier(source, adapter)
    config_file = path.parent / CONFIG
    if not config_file.is_file():
        raise UserError(f"{str(path)!r} has no config.toml beside it; predict needs the run "
                        "folder, whose config names the encoder.")
    config = load(config_file)
    tensors, metadata = read_tensors(path, what="classifier")
    if "encoder" not in metadata:  # every classifier `imgxfer run` saves records its encoder
        kind = "a generator file" if "component" in metadata else "not a classifier file"
        raise UserError(f"{str(path)!r} is {kind} of `imgxfer run`; give the run folder or "
                        "its classifier*.safetensors.")
    if metadata["encoder"] != config.encoder:
        raise UserError(f"{str(path)!r} was trained with encoder {metadata['encoder']!r}, but "
                        f"the config.toml beside it names {config.encoder!r}.")
    try:
        classes = [str(c) for c in json.loads(metadata["classes"])]
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{str(path)!r} records no class names; it was not saved by "
                        "`imgxfer run`.") from None
    if any(not k.startswith(("encoder.", "head.")) for k in tensors):
        raise UserError(f"{str(path)!r} holds a model other than an encoder with a linear head "
                        "(a plugin adapter's own model?); predict can rebuild only those.")
    require(registry, config, "encoders", config.encoder)  # names a missing plugin's distribution
    options = dict(config.options.get("encoder", {}))
    # The encoder as the run built it: pretrained weights can choose an architecture
    # variant (timm's EfficientNet-Lite0 with its packaged weights uses "same" padding and
    # other BatchNorm settings), so rebuilding "randomly" could load the same tensor names
    # into another network. Only when those weights cannot be had (offline) is it rebuilt
    # with random weights, and then the fingerprint below must prove it is the same one.
    try:
        encoder = registry.build("encoders", config.encoder, options, seed=config.seed)
    except UserError:
        if "pretrained" not in options:
            raise
        encoder = registry.build("encoders", config.encoder,
                                 {**options, "pretrained": "random"}, seed=config.seed)
    try:
        model = rebuild(encoder, len(classes), tensors)
    except RuntimeError as error:
        # torch's first line only says "Error(s) in loading state_dict"; the second names keys.
        lines = str(error).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0] if lines else ""
        raise UserError(f"{str(path)!r} does not fit encoder {config.encoder!r} with the "
                        f"options of its config.toml ({detail}).") from None
    model.eval()
    check_fingerprint(model, metadata, path)
    return LoadedClassifier(model, classes, adapter or metadata.get("adapter", "?"), path, config,
                            metadata)


def check_fingerprint(model: Classifier, metadata: dict[str, str], path: Path) -> None:
    """The rebuilt classifier must give the logits the run saved for fixed inputs (files
    from before fingerprints existed are not checked)."""
    from imgxfer.run.artifacts import fingerprint

    if "fingerprint" not in metadata:
        return
    try:
        saved = torch.tensor(json.loads(metadata["fingerprint"]))
    except (ValueError, TypeError):
        raise UserError(f"{str(path)!r} has damaged 'fingerprint' metadata.") from None
    mine = torch.tensor(fingerprint(model, torch.device("cpu")))
    # Loose enough for another device's or thread count's rounding, far tighter than a
    # different network (which is off by whole units).
    if mine.shape != saved.shape or not torch.allclose(mine, saved, rtol=1e-3, atol=1e-3):
        raise UserError(f"the encoder rebuilt from {str(path.parent / 'config.toml')!r} does not "
                        f"compute what the run's did (its pretrained weights may be needed to "
                        f"build the same architecture: make them available offline, see "
                        f"`imgxfer list encoders`).")


def reading_options(config: Any, target_layout: str = "") -> dict[str, Any]:
    """How to read image files for a run: as it read its target files when its target was
    a ``folder:`` or ``csv:`` dataset (size, channels, background, fit, invert), else with
    those datasets' defaults, so new images reach the encoder as the training images did;
    a built-in target in the glyph layout (digits, mnist: ``target_layout``, from the
    classifier file) has its new files put in that layout too (``fit=glyph``)."""
    from dataclasses import asdict, fields

    from imgxfer.data.files import ImageOptions

    keys = {f.name for f in fields(ImageOptions)}
    if config.target.startswith(("folder:", "csv:")):
        used = config.options.get("target", {})
    else:
        used = {"fit": GLYPH} if target_layout == GLYPH else {}
    return {**asdict(ImageOptions()), **{k: v for k, v in used.items() if k in keys}}


@torch.inference_mode()
def predict_proba(loaded: LoadedClassifier, images: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """Class probabilities of raw [0,1] images, ``BATCH`` images at a time."""
    model = loaded.model.to(device)
    # Classifier.encoder is typed nn.Module; its preprocess is the Encoder protocol's.
    out = [model(cast(Encoder, model.encoder).preprocess(images[i:i + BATCH].to(device)))
           .softmax(1).cpu()
           for i in range(0, len(images), BATCH)]
    return torch.cat(out) if out else torch.empty(0, len(loaded.class_names))


def prediction_rows(data: Any, proba: torch.Tensor, class_names: Sequence[str],
                    root: Path | None = None, renamed: dict[str, str] | None = None
                    ) -> list[dict[str, Any]]:
    """One row per image: ``path`` for images read from files (loose files are named
    relative to ``root``, the folder they were found in, as the user wrote it; written as
    :func:`~imgxfer.cli.inputs.text_path` writes paths), else the dataset ``index``;
    the prediction, its confidence and the label when known, in the run's spelling where
    ``renamed`` (from :func:`run_class_names`) has one."""
    from imgxfer.cli.inputs import text_path

    confidence, predicted = proba.max(1)
    renamed = renamed or {}
    rows = []
    for i in range(len(proba)):
        row: dict[str, Any]
        if data.paths is not None:
            row = {"path": text_path(data.paths[i])}
        elif data.labels is None:
            row = {"path": text_path(root / data.ids[i] if root is not None else data.ids[i])}
        else:
            row = {"index": data.ids[i]}
        row["predicted"] = class_names[int(predicted[i])]
        row["confidence"] = round(float(confidence[i]), 4)
        if data.labels is not None:
            name = data.class_names[int(data.labels[i])]
            row["label"] = renamed.get(name, name)
        rows.append(row)
    return rows


def run_class_names(names: Sequence[str], class_names: Sequence[str]
                    ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The input's class names that mean one of the run's classes under another spelling
    (any case, "3" for "three": :func:`imgxfer.data.classnames.class_matches`), each with the
    run's name, so a folder "3" is scored as class "three"; and those that could mean
    several of the run's classes, with them (left unscored)."""
    renamed, ambiguous = {}, {}
    for name in names:
        if name in class_names:
            continue
        hits = [class_names[i] for i in class_matches(name, class_names)]
        if len(hits) == 1:
            renamed[name] = hits[0]
        elif hits:
            ambiguous[name] = hits
    return renamed, ambiguous


def accuracy_note(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """The accuracy on labelled rows, or why there is none."""
    labelled = [r for r in rows if "label" in r]
    if not labelled:
        return ""
    unknown = sorted({r["label"] for r in labelled} - set(class_names))
    known = [r for r in labelled if r["label"] in class_names]
    # Images of classes the classifier cannot predict are left out, not counted wrong.
    names = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
    if not known:
        return (f"no accuracy: the labels name only classes the classifier does not know "
                f"({names}).")
    n = len(labelled) - len(known)
    left_out = (f"; {n} image{'s' if n != 1 else ''} of classes the classifier does not "
                f"know ({names}) not scored" if unknown else "")
    correct = sum(r["label"] == r["predicted"] for r in known)
    return (f"accuracy {correct / len(known):.4f} on {len(known)} labelled "
            f"image{'s' if len(known) != 1 else ''}{left_out}.")


def brightness_note(images: torch.Tensor, loaded: LoadedClassifier, files: bool) -> str:
    """A warning when the images are far darker or brighter on average than the run's
    target images (beyond 3 std of those, and at least 0.15), or ``""``."""
    from imgxfer.run.artifacts import image_brightness

    try:
        mean, std = (float(v) for v in json.loads(loaded.metadata["target_brightness"]))
    except (KeyError, ValueError, TypeError):  # older files record none
        return ""
    if not len(images):
        return ""
    new = image_brightness(images)[0]
    if abs(new - mean) <= max(3 * std, 0.15):
        return ""
    hint = (" If ink and background are the other way round from the run's images, read "
            "them with --dataset-opt invert=true." if files else "")
    return (f"these images are {'brighter' if new > mean else 'darker'} on average "
            f"({new:.2f}) than the run's target images ({mean:.2f} ± {std:.2f}), so the "
            f"classifier may not fit them.{hint}")


@dataclass
class RunImages:
    """Images read for a run's classifier (:func:`read_as_run_did`): the input, whether it
    came from files, the folder loose files are named relative to, and the input's class
    names that mean one of the run's classes (see :func:`run_class_names`)."""

    data: Any  # imgxfer.cli.inputs.ImageInput
    files: bool
    root: Path | None
    renamed: dict[str, str]


def read_as_run_did(source: str, loaded: LoadedClassifier, registry: Registry,
                    options: dict[str, Any], *, limit: int | None = None) -> RunImages:
    """Read ``source`` for ``loaded``'s classifier (`imgxfer predict` and `explain`):
    files as the run read its target files (``options`` from --dataset-opt win), the
    first ``limit`` images; warnings (unreadable files, brightness far from the run's,
    class names read another way) go to standard error."""
    from imgxfer.cli.inputs import is_dataset_name, load_images, select

    files = not is_dataset_name(source, registry) or source.startswith(("folder:", "csv:"))
    if files:  # read like the run's training files
        run_options = reading_options(loaded.config, loaded.metadata.get("target_layout", ""))
        # size 0: the run read its files at its encoder's input size.
        run_options["size"] = run_options["size"] or max(encoder_input_size(loaded.model.encoder))
        if "fit" not in options and run_options["fit"] == GLYPH:
            click.echo(f"reading the images in the {GLYPH} layout of the run's target "
                       f"{loaded.config.target!r} (fit={GLYPH}; --dataset-opt fit=crop reads "
                       "them as they are).", err=True)
        options = {**run_options, **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_images(source, registry, options, limit=limit)
    for message in dict.fromkeys(list(data.notes) + [str(w.message) for w in caught]):
        click.echo(f"warning: {message}", err=True)
    data = select(data, limit=limit)
    note = brightness_note(data.images, loaded, files)
    if note:
        click.echo(f"warning: {note}", err=True)
    given = Path(source).expanduser()
    root = (given if given.is_dir() else given.parent) if files else None
    return RunImages(data, files, root, _renamed_classes(data, loaded.class_names))


def _renamed_classes(data: Any, class_names: Sequence[str]) -> dict[str, str]:
    """:func:`run_class_names` of labelled input, with what it found said on stderr."""
    if data.labels is None:
        return {}
    renamed, ambiguous = run_class_names(data.class_names, class_names)
    if renamed:
        click.echo("labels read as the run's classes: "
                   + ", ".join(f"{a} as {b}" for a, b in renamed.items()) + ".", err=True)
    for name, hits in ambiguous.items():
        click.echo(f"warning: label {name!r} could mean several of the run's classes "
                   f"({', '.join(hits)}); its images are not scored.", err=True)
    return renamed


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["predicted", "confidence"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_csv(path: Path | None, rows: Sequence[dict[str, Any]]) -> None:
    """The predictions' CSV into ``path``, or to standard output."""
    if path is None:
        click.echo(csv_text(rows), nl=False)
        return
    from imgxfer.core.runfolder import atomic_write_text

    atomic_write_text(path, csv_text(rows))


@click.command("predict", short_help="Classify images with a run's classifier.")
@click.argument("source", metavar="PATH_OR_DATASET")
@from_run
@out_option(f"CSV file to write, an existing folder to write {DEFAULT_OUT} into "
            f"(default ./{DEFAULT_OUT}), or - for standard output.")
@limit_option("Classify")
@dataset_opt_option
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@force_option
def predict_command(source: str, run: str, adapter: str | None, out: str | None,
                    limit: int | None, dataset_opt: tuple[str, ...], device: str,
                    force: bool) -> None:
    """Classify images with the classifier a run trained; write one CSV row per image.
    For a segmentation or detection run (--task segment|detect), write mask PNGs into a
    folder (default ./masks) or boxes as COCO JSON (default ./detections.json).

    PATH_OR_DATASET is what `imgxfer caption` reads: a registered dataset, a folder with
    one sub-folder of images per class, a folder of images or one image file. Files are
    read as the run read its target files (its size, channels, background, fit and
    invert options; --dataset-opt overrides them), so images should look like the run's
    target images (e.g. the same ink and background colours; images far darker or
    brighter than those are warned about, and --dataset-opt invert=true reads files the
    other way round). Each row holds the image's path (files) or index (datasets), the
    predicted class, its confidence and, for labelled input, the true label (a class
    folder "3" or "Three" counts as the run's class "three"); the accuracy is printed.

    \b
    Examples:
      imgxfer predict photos/ --from runs/20250101-120000-syndigits-to-mnist
      imgxfer predict digits --from RUN --adapter mmd --out digits.csv --force
    """
    from imgxfer.cli.inputs import check_count, check_source, parse_options, resolve_out
    from imgxfer.cli.predict_dense import is_dense_run, predict_dense
    from imgxfer.tasks.classify.plan import resolve_device

    check_count("--limit", limit)
    registry, target_device = current_registry(), resolve_device(device)
    if is_dense_run(run):  # a segmentation or detection run: masks or boxes
        return predict_dense(source, run, adapter, out, limit, target_device, force, registry)
    check_source(source, registry)
    options = parse_options(dataset_opt, "--dataset-opt")
    # Loaded before any image is read, so a wrong run folder fails at once.
    loaded = load_classifier(run, adapter, registry)
    # The output last among the checks: an existing file must not hide a wrong input.
    path = None if out == "-" else resolve_out(out, force=force, default=DEFAULT_OUT)
    images = read_as_run_did(source, loaded, registry, options, limit=limit)
    data = images.data
    rows = prediction_rows(data, predict_proba(loaded, data.images, target_device),
                           loaded.class_names, images.root, images.renamed)
    _write_csv(path, rows)
    click.echo(f"wrote {len(rows)} prediction{'s' if len(rows) != 1 else ''} of "
               f"{loaded.adapter!r} ({loaded.path}) to {path or 'standard output'}", err=True)
    note = accuracy_note(rows, loaded.class_names)
    if note and source == loaded.config.target:
        note += (" These images include the ones the run trained on; its accuracy on "
                 "held-out images is target.accuracy in its metrics.json.")
    if note:
        click.echo(note, err=True)
