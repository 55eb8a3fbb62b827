"""`imgxfer generate`: draw images from a generator that `imgxfer run` trained.

    imgxfer generate --from runs/20250101-120000-mnist --prompt "a handwritten digit seven" \
        --n 16 --out sevens

reads the run folder's ``generator.safetensors`` (or a generator file given directly),
rebuilds the generator through the plugin registry with the options it was trained with,
and writes ``DIR/000.png``, ``DIR/001.png``, ... and ``DIR/grid.png`` (all of them in one
image).

The class of the images is ``--label`` (a class name or index) or, without it, the one
class the prompt names (whole words, any case: "a digit seven" -> seven; when no name
appears as written, the digits 0-9 stand for their number words: "a digit 7" -> seven).
A --label other than the class the prompt names is warned about. A prompt that
names no class, or several, is an error that lists the classes. The prompt itself
conditions a text-conditioned generator; prompts worded like the run's captions
(``captions.jsonl``, e.g. "a handwritten digit seven, domain mnist") work best.

The class names come from the file's ``classes`` metadata when it has one, otherwise from
the ``metrics.json`` of the run folder the file is in (``data.classes``).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import click
import torch

from imgxfer.cli.context import current_registry
from imgxfer.cli.inputs import GRID_FILE, SAMPLE_NAME
from imgxfer.core.config import check_seed
from imgxfer.core.errors import UserError
from imgxfer.core.runfolder import GENERATOR as GENERATOR_FILE
from imgxfer.core.runfolder import METRICS, atomic_write_bytes
from imgxfer.data.classnames import class_matches, prompt_classes
from imgxfer.plugin.registry import Registry

GRID_MIN_SIDE = 96  # pixels each image takes at least in grid.png


@dataclass
class LoadedGenerator:
    """A generator rebuilt from a saved file, with the class names it was trained on
    (``None`` when neither the file nor its run folder records them)."""

    generator: Any
    name: str
    path: Path
    class_names: list[str] | None


@dataclass
class Generated:
    images: torch.Tensor
    label: int  # -1: edited images of several classes
    class_name: str | None
    files: list[Path]
    grid: Path
    notes: list[str] = field(default_factory=list)  # warnings for the user


def _read_classes(path: Path, metadata: dict[str, str]) -> list[str] | None:
    if "classes" in metadata:
        try:
            classes = json.loads(metadata["classes"])
        except ValueError:
            raise UserError(f"{str(path)!r} has damaged 'classes' metadata.") from None
        if isinstance(classes, list):
            return [str(c) for c in classes]
    metrics = path.parent / METRICS
    if metrics.is_file():
        try:
            classes = json.loads(metrics.read_text(encoding="utf-8"))["data"]["classes"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if isinstance(classes, list):
            return [str(c) for c in classes]
    return None


def load_generator(source: str | Path, registry: Registry) -> LoadedGenerator:
    """Rebuild the generator saved in a run folder (its ``generator.safetensors``) or in
    a generator file, through the registry, with the options recorded beside it."""
    from imgxfer.core.runfolder import read_tensors
    from imgxfer.plugin.protocols import declared

    source = Path(source)
    if source.is_dir():
        path = source / GENERATOR_FILE
        if not path.is_file():
            raise UserError(f"the run folder {str(source)!r} has no {GENERATOR_FILE} (was the "
                            "run made with --generator none, or stopped before the generator "
                            "was saved?).")
    elif source.exists():
        path = source
    else:
        raise UserError(f"--from {str(source)!r} does not exist; give a run folder or a "
                        f"{GENERATOR_FILE} file.")
    tensors, metadata = read_tensors(path, what="generator file")
    # Training checkpoints record format = "<something>.training" (imgxfer.plugin.protocols).
    if metadata.get("format", "").endswith(".training"):
        raise UserError(f"{str(path)!r} is a training checkpoint, not a finished generator; "
                        "resume the run to finish training, then generate from its "
                        f"{GENERATOR_FILE}.")
    name = metadata.get("component")
    if not name:
        raise UserError(f"{str(path)!r} was not saved by an imgxfer generator (it records "
                        "no generator name in its 'component' metadata).")
    try:
        options = json.loads(metadata.get("options") or "{}")
    except ValueError:
        raise UserError(f"{str(path)!r} has damaged 'options' metadata.") from None
    if not isinstance(options, dict):
        raise UserError(f"{str(path)!r} has damaged 'options' metadata.")
    component = registry.get("generators", name)
    # Architecture options the file records win over defaults (which may have changed
    # since); options the run set explicitly are kept, so a conflict is reported.
    from_state = getattr(component.factory, "options_from_state", None)
    if callable(from_state):
        accepted = set(component.options())
        options = {**{k: v for k, v in from_state(tensors).items() if k in accepted},
                   **options}
    generator = component.build(name, options)
    generator.load_state_dict(tensors)
    classes = _read_classes(path, metadata)
    count = declared(generator, "num_classes", "generators")
    if classes is not None and count is not None and len(classes) != count:
        raise UserError(f"{str(path)!r} holds a generator of {count} classes, but its run "
                        f"lists {len(classes)} ({', '.join(classes)}).")
    return LoadedGenerator(generator, name, path, classes)


def resolve_label(prompt: str, label: str | int | None,
                  class_names: Sequence[str] | None, num_classes: int | None = None) -> int:
    """The class index: ``label`` (a class name, any case, or an index), or else the one
    class whose name appears in ``prompt`` as whole words. Anything else is a
    :class:`UserError` that lists the classes."""
    count = len(class_names) if class_names is not None else num_classes
    listing = (", ".join(f"{i}={c}" for i, c in enumerate(class_names))
               if class_names is not None else f"indices 0 to {(count or 1) - 1}")
    if label is not None:
        text = str(label).strip()
        # A class name wins over an index: classes named "1", "2", "3" are drawn by name.
        if class_names is not None and text in class_names:
            return list(class_names).index(text)
        if re.fullmatch(r"[+-]?\d+", text):
            index = int(text)
            if count is not None and not 0 <= index < count:
                raise UserError(f"--label {text} is not a class index; classes: {listing}.")
            return index
        # Any case, and "three" draws class "3" (a "3" was taken as an index above).
        named = class_matches(text, class_names) if class_names is not None else []
        if len(named) == 1:
            return named[0]
        if named:
            assert class_names is not None  # named is empty without class names
            raise UserError(f"--label {text!r} matches several classes "
                            f"({', '.join(class_names[i] for i in named)}); write one as it is.")
        raise UserError(f"--label {text!r} is not a class; classes: {listing}.")
    if class_names is None:
        raise UserError("the class names of this generator are unknown (no 'classes' metadata "
                        "and no metrics.json beside it), so the prompt cannot name one; "
                        f"pass --label with a class index ({listing}).")
    classes = prompt_classes(prompt, class_names)
    if len(classes) == 1:
        return classes[0]
    if not classes:
        raise UserError(f"the prompt {prompt!r} names none of the classes; name one in it or "
                        f"pass --label NAME_OR_INDEX. Classes: {listing}.")
    raise UserError(f"the prompt {prompt!r} names several classes "
                    f"({', '.join(class_names[c] for c in classes)}); choose one with --label.")


def _png(image: torch.Tensor) -> bytes:
    """``[C, H, W]`` in [0, 1] -> PNG bytes (grey for one channel, RGB for three)."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        picture = Image.fromarray(pixels[0].numpy(), mode="L")
    else:
        picture = Image.fromarray(pixels[:3].permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder for the images.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {str(out)!r} is not empty; choose another folder or pass "
                        "--force to write into it (its NNN.png and grid.png are replaced).")


def _prepare_out(out: Path, force: bool) -> None:
    _check_out(out, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {str(out)!r} cannot be created: a parent is a file.") from None


def generate(source: str | Path, prompt: str | None, registry: Registry, *, n: int,
             out: str | Path, label: str | int | None = None, seed: int = 0,
             force: bool = False, device: str = "auto", images: str | None = None
             ) -> Generated:
    """Draw ``n`` images of one class from a saved generator and write them as PNGs
    (``out/000.png``, ...) plus ``out/grid.png``. Everything ``imgxfer generate`` does.
    With ``images`` (a dataset name or image files, as ``imgxfer caption`` reads them),
    edit the first ``n`` of them instead (:func:`edit_images`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a whole number of images, 1 or more; got {n!r}.")
    check_seed(seed, "--seed")
    out = Path(out)
    _check_out(out, force)  # before the slower loading
    from imgxfer.plugin.protocols import declared
    from imgxfer.tasks.classify.plan import resolve_device
    from imgxfer.tasks.classify.stages.generate import check_images

    where = resolve_device(device)
    loaded = load_generator(source, registry)
    if images is not None:
        return edit_images(loaded, images, prompt or "", n=n, out=out, label=label,
                           seed=seed, force=force, device=where, registry=registry)
    if not prompt:
        raise UserError("--prompt is needed: what to draw (or --images, to edit images).")
    index = resolve_label(prompt, label, loaded.class_names,
                          declared(loaded.generator, "num_classes", "generators"))
    drawn = check_images(_sample(loaded, prompt, index, n, seed, where), n, loaded.name)
    files = _write_images(out, drawn, force)
    name = loaded.class_names[index] if loaded.class_names else None
    notes = []
    if "text" not in loaded.generator.conditioning:
        notes.append(f"the generator {loaded.name!r} follows the class only; the prompt's "
                     "other words do not change the images.")
    # --label chose another class than the prompt names (as written: "a 3 px stroke"
    # is no contradiction of --label seven).
    named = (prompt_classes(prompt, loaded.class_names, numerals=False)
             if loaded.class_names else [])
    if named and index not in named:
        assert loaded.class_names is not None  # named is empty without class names
        names = " and ".join(repr(loaded.class_names[c]) for c in named)
        notes.append(f"the prompt names {names}, but --label draws {name!r}.")
    return Generated(drawn, index, name, files, out / GRID_FILE, notes)


def _sample(loaded: LoadedGenerator, prompt: str, index: int, n: int, seed: int,
            device: Any) -> torch.Tensor:
    """``n`` images of class ``index`` from the prompt. A generator trained to edit
    images (e.g. ``gan`` of a ``--synthesis translate`` run) refuses prompts in its own
    words, which cannot name this command's option; the sentence is finished here."""
    from imgxfer.plugin.protocols import declared

    try:
        return cast(torch.Tensor, loaded.generator.sample([prompt] * n, [index] * n,
                                                          seed=seed, device=device))
    except UserError as error:
        edits = set(declared(loaded.generator, "synthesis", "generators")) - {"text"}
        if not edits or not hasattr(loaded.generator, "edit"):
            raise
        raise UserError(f"{str(error).rstrip('.')}; give --images DATASET_OR_PATH instead "
                        "of --prompt to have it edit images (e.g. --images mnist).") from None


def edit_images(loaded: LoadedGenerator, spec: str, prompt: str, *, n: int, out: Path,
                label: str | int | None, seed: int, force: bool, device: Any,
                registry: Registry) -> Generated:
    """The first ``n`` images of ``spec`` edited by a generator trained for ``--synthesis
    shots`` or ``translate`` (source images into the target's style). Each keeps its own
    label where ``spec`` is a labelled dataset whose classes the generator knows, else
    ``--label``'s."""
    from imgxfer.cli.inputs import load_images
    from imgxfer.plugin.protocols import declared
    from imgxfer.tasks.classify.stages.generate import check_images

    modes = set(declared(loaded.generator, "synthesis", "generators")) - {"text"}
    if not modes or not hasattr(loaded.generator, "edit"):
        raise UserError(f"the generator {loaded.name!r} draws from prompts only; it cannot "
                        "edit images (give --prompt instead of --images).")
    data = load_images(spec, registry, limit=n)
    count = min(n, len(data.images))
    labels = _edit_labels(data, label, prompt, loaded, count)
    edited = check_images(loaded.generator.edit(data.images[:count], labels, [prompt] * count,
                                                seed=seed, device=device),
                          count, loaded.name, "edit")
    files = _write_images(out, edited, force)
    notes = [] if count == n else [
        f"{spec} holds {count} image{'s' if count != 1 else ''}, fewer than --n {n}."]
    first = int(labels[0]) if len(set(labels.tolist())) == 1 else -1
    name = loaded.class_names[first] if loaded.class_names and first >= 0 else None
    return Generated(edited, first, name, files, out / GRID_FILE, notes)


def _edit_labels(data: Any, label: str | int | None, prompt: str, loaded: LoadedGenerator,
                 count: int) -> torch.Tensor:
    from imgxfer.plugin.protocols import declared

    if label is not None or data.labels is None:
        if label is None:
            raise UserError("these images have no labels: give --label, the class to keep.")
        index = resolve_label(prompt, label, loaded.class_names,
                              declared(loaded.generator, "num_classes", "generators"))
        return torch.full((count,), index, dtype=torch.long)
    names = loaded.class_names or []
    unknown = sorted(set(data.class_names) - set(names))
    if unknown:
        raise UserError(f"the generator {loaded.name!r} does not know the class"
                        f"{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        "of these images; give --label.")
    return torch.tensor([names.index(data.class_names[y]) for y in data.labels[:count]])


def _write_images(out: Path, images: torch.Tensor, force: bool) -> list[Path]:
    """``out/000.png``, ... and ``out/grid.png``; stale numbered files of an earlier, larger
    set are removed once the new set is complete."""
    n = len(images)
    _prepare_out(out, force)
    width = max(3, len(str(n - 1)))
    files = []
    for i, image in enumerate(images):
        path = out / f"{i:0{width}d}.png"
        atomic_write_bytes(path, _png(image))
        files.append(path)
    from torchvision.utils import make_grid

    grid = make_grid(_enlarged(images), nrow=math.ceil(math.sqrt(n)), padding=2, pad_value=0.5)
    atomic_write_bytes(out / GRID_FILE, _png(grid[:images.shape[1]]))
    for old in set(out.iterdir()) - set(files):
        if old.is_file() and SAMPLE_NAME.fullmatch(old.name):
            old.unlink()
    return files


def _enlarged(images: torch.Tensor) -> torch.Tensor:
    """The images scaled up by a whole factor, nearest neighbour (pixels stay sharp
    squares, nothing is invented), so that each is at least GRID_MIN_SIDE pixels in
    grid.png: 28-px digits at their own size are too small to look at."""
    factor = math.ceil(GRID_MIN_SIDE / max(images.shape[-2:]))
    if factor <= 1:
        return images
    return torch.nn.functional.interpolate(images.float(), scale_factor=factor, mode="nearest")


@click.command("generate", short_help="Draw images from a run's generator.")
@click.option("--from", "source", required=True, metavar="RUN_FOLDER_OR_FILE",
              help="A run folder of `imgxfer run`, or its generator.safetensors.")
@click.option("--prompt",
              help='What to draw, e.g. "a handwritten digit seven"; it may name the class.')
@click.option("--images", metavar="DATASET_OR_PATH",
              help="Edit these images instead (a generator trained with --synthesis shots "
                   "or translate): a dataset name, a folder or an image file; the first --n.")
@click.option("--label", metavar="NAME_OR_INDEX",
              help="The class to draw (name or index); default: the class the prompt names.")
@click.option("--n", "n", type=int, default=16, show_default=True, help="How many images.")
@click.option("--out", required=True, type=click.Path(), metavar="DIR",
              help="Folder for 000.png, 001.png, ... and grid.png (must be empty or new).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the noise: the same seed draws the same images.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out folder.")
@click.option("--device", default="auto", show_default=True,
              help="Where to sample: auto, cpu, cuda, cuda:N or mps.")
def generate_command(source: str, prompt: str | None, images: str | None,
                     label: str | None, n: int, out: str, seed: int, force: bool,
                     device: str) -> None:
    """Draw images of one class from the generator of a run.

    The class is --label, or the class the prompt names ("a digit seven" -> seven; "a 7"
    too, when no class is named as written); a prompt naming no class (or several)
    without --label is an error listing the classes, and a --label other than the class
    the prompt names is warned about.

    \b
    Examples:
      imgxfer generate --from runs/RUN --prompt "a handwritten digit seven, domain digits" --out sevens
      imgxfer generate --from runs/RUN --prompt "a 3" --n 64 --seed 1 --out threes
      imgxfer generate --from runs/RUN/generator.safetensors --prompt "thin strokes" --label 4 --out fours
      imgxfer generate --from runs/TRANSLATE_RUN --images mnist --n 64 --out mnist-in-target-style
    """
    # A UserError ends as one sentence and exit status 2 (the imgxfer group shows it).
    result = generate(source, prompt, current_registry(), n=n, out=out, label=label,
                      seed=seed, force=force, device=device, images=images)
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    what = (f"class {result.class_name!r}" if result.class_name else
            "several classes" if result.label < 0 else f"class {result.label}")
    click.echo(f"wrote {len(result.files)} images of {what} to {out} (grid: {result.grid})",
               err=True)
