"""`imgxfer predict` for a segmentation or detection run (``--task segment|detect``).

    imgxfer predict photos/ --from runs/20261201-120000-segment-syndigits-to-mnist-m

rebuilds the run's model (its encoder from config.toml, the head and weights from
``model-<adapter>.safetensors``) and writes, for a segmentation run, one mask PNG per
image into ``OUT/masks/`` (``<image stem>.png``, a palette PNG whose pixel values are
class indices, 0 the background) and ``OUT/classes.txt`` (background first): with the
images in ``OUT/images/`` that is a ``masks:OUT`` dataset. A detection run writes one
COCO JSON file (``images`` with their file names, ``categories``, ``annotations`` with
``bbox`` as x, y, width, height and a ``score``), which ``coco:FILE`` reads beside the
images (``--out -`` writes it to standard output). Images are predicted at the run's scene size and masks and boxes are mapped
back to each image's own size. A scene dataset given by name (``digit-scenes:mnist``)
is scored against its annotations too."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import click
import numpy as np
import torch
import torch.nn.functional as F

from imgxfer.core.config import RunConfig, load
from imgxfer.core.errors import UserError, one_line
from imgxfer.core.runfolder import CONFIG, atomic_write_bytes, atomic_write_text
from imgxfer.data.scenes import SceneDataset
from imgxfer.nn.dense.model import DenseModel
from imgxfer.plugin.provenance import require
from imgxfer.plugin.registry import Registry
from imgxfer.tasks.dense import artifacts

DEFAULT_OUT = {"segment": "masks", "detect": "detections.json"}


def is_dense_run(run: str | Path) -> bool:
    """Whether ``run`` (a run folder or a file in one) holds a dense run."""
    folder = Path(run).expanduser()
    folder = folder if folder.is_dir() else folder.parent
    return (folder / CONFIG).is_file() and load(folder / CONFIG).task != "classify"


def load_model(run: str | Path, adapter: str | None, registry: Registry
               ) -> tuple[DenseModel, RunConfig, str]:
    """The run's model of ``adapter`` (its only one when ``None``; a run of several asks
    for ``--adapter``, as classification does), rebuilt from its files."""
    given = Path(run).expanduser()
    folder = given if given.is_dir() else given.parent
    config = load(folder / CONFIG)
    names = config.adapter_names()
    if given.is_file():
        path = given
    else:
        if adapter is None and len(names) > 1:
            raise UserError(f"the run {str(folder)!r} holds models of several adapters "
                            f"({', '.join(names)}); choose one with --adapter.")
        adapter = adapter or names[0]
        if adapter not in names:
            raise UserError(f"the run in {str(folder)!r} has no adapter {adapter!r}; it has "
                            f"{', '.join(names)}.")
        path = folder / artifacts.model_file(adapter)
    require(registry, config, "encoders", config.encoder, config.task)  # a missing plugin
    encoder = registry.build("encoders", config.encoder, config.options["encoder"],
                             seed=config.seed, task=config.task)
    return artifacts.load(path, encoder), config, adapter or path.stem


def read_inputs(source: str, registry: Registry, task: str, limit: int | None
                ) -> tuple[list[torch.Tensor], list[str], SceneDataset | None]:
    """Images at their own size (float [C, H, W]) and a name for each: files from a
    folder or one file, or a registered scene dataset (returned too, for its scores)."""
    from imgxfer.cli.inputs import _is_image_name, is_dataset_name

    if is_dataset_name(source, registry) or _is_scene_dataset(source, registry, task):
        data = registry.build("datasets", source, {}, task=task)
        if not isinstance(data, SceneDataset):
            raise UserError(f"{source!r} is a classification dataset; a {task} run predicts "
                            "scenes: a folder of images, one image or a scene dataset.")
        n = len(data) if limit is None else min(limit, len(data))
        data = data.subset(list(range(n)))
        return list(data.images.tensor()), [f"{i:05d}.png" for i in range(n)], data
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"{source!r} is neither a registered dataset nor an existing path.")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                 if p.is_file() and _is_image_name(p))
    if not files:
        raise UserError(f"folder {source!r} holds no images.")
    return [_read(p) for p in files[:limit]], [p.name for p in files[:limit]], None


def _is_scene_dataset(name: str, registry: Registry, task: str) -> bool:
    from imgxfer.core.errors import UnknownComponentError

    try:
        registry.get("datasets", name, task)
    except UnknownComponentError:
        return False
    return True


def _read(path: Path) -> torch.Tensor:
    """One file as float RGB [3, H, W], decoded as classification decodes its files (a
    decompression bomb, too, is one sentence)."""
    from imgxfer.data.files import Unreadable, decode

    try:
        array = np.asarray(decode(path).convert("RGB"), dtype=np.float32) / 255.0
    except Unreadable as error:
        raise UserError(f"image {str(path)!r} cannot be read ({error}).") from None
    except ValueError as error:  # a mode Pillow cannot turn into RGB
        raise UserError(f"image {str(path)!r} cannot be read ({one_line(error)}).") from None
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.inference_mode()
def predict_one(model: DenseModel, image: torch.Tensor, device: torch.device) -> Any:
    """The prediction for one image at its own size: a mask [H, W], or a dict of boxes
    (in the image's pixels), scores and labels."""
    h, w = image.shape[-2:]
    x = F.interpolate(image[None], size=model.size, mode="bilinear", antialias=True,
                      align_corners=False) if (h, w) != model.size else image[None]
    outputs = model(model.preprocess(x.to(device)))
    if model.task == "segment":
        logits = F.interpolate(outputs.float(), size=(h, w), mode="bilinear",
                               align_corners=False)
        return model.predict(logits)["masks"][0].cpu()
    found = model.predict(outputs)[0]
    scale = torch.tensor([w / model.size[1], h / model.size[0]] * 2)
    return {k: v.cpu() for k, v in found.items()} | {"boxes": found["boxes"].cpu() * scale}


def write_masks(folder: Path, names: list[str], masks: list[torch.Tensor],
                class_names: list[str]) -> None:
    """One palette PNG per mask (pixel value = class index) in ``folder/masks`` and
    ``folder/classes.txt``: ``masks:folder`` once the images are in ``folder/images``."""
    from PIL import Image

    (folder / "masks").mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for name, mask in zip(names, masks, strict=True):
        image = Image.fromarray(mask.numpy().astype(np.uint8), mode="P")
        image.putpalette(palette)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(folder / "masks" / f"{Path(name).stem}.png", buffer.getvalue())
    atomic_write_text(folder / "classes.txt", "\n".join(["background", *class_names]) + "\n")


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (a viewer shows each class in its own colour, the
    background black): the bits of the index spread over R, G and B."""
    colours = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours


def coco_json(names: list[str], sizes: list[tuple[int, int]], found: list[dict[str, Any]],
              class_names: list[str]) -> dict[str, Any]:
    images = [{"id": i + 1, "file_name": name, "height": h, "width": w}
              for i, (name, (h, w)) in enumerate(zip(names, sizes, strict=True))]
    annotations: list[dict[str, Any]] = []
    for i, det in enumerate(found):
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                     det["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(label) + 1, "score": round(score, 4),
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2),
                                         round(y1 - y0, 2)], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predict_dense(source: str, run: str, adapter: str | None, out: str | None,
                  limit: int | None, device: torch.device, force: bool,
                  registry: Registry) -> None:
    """`imgxfer predict` of a dense run: masks or boxes for every image, written to
    ``out``; every input problem is one sentence before anything is written."""
    model, config, adapter = load_model(run, adapter, registry)
    model = model.to(device)
    target = check_out(out or DEFAULT_OUT[config.task], config.task, force)
    images, names, data = read_inputs(source, registry, config.task, limit)
    if data is not None:
        data = _in_run_classes(data, model.class_names)
    found = [predict_one(model, image, device) for image in images]
    if config.task == "segment":
        assert target is not None  # check_out refuses standard output for masks
        write_masks(target, names, found, model.class_names)
        what = f"{len(found)} masks"
    else:
        sizes = cast(list[tuple[int, int]], [tuple(i.shape[-2:]) for i in images])  # (H, W)
        coco = coco_json(names, sizes, found, model.class_names)
        if target is None:
            click.echo(json.dumps(coco))
        else:
            atomic_write_text(target, json.dumps(coco))
        what = f"{len(coco['annotations'])} boxes in {len(found)} images"
    click.echo(f"wrote {what} of {adapter!r} to {target or 'standard output'}", err=True)
    if data is not None:
        click.echo(f"on these {len(data)} scenes: {score(found, data, config.task)} (the run's "
                   "held-out score is in its metrics.json)", err=True)


def check_out(out: str, task: str, force: bool) -> Path | None:
    """``--out``: a folder for masks, a file for boxes; an existing one only with
    ``--force``. ``-`` is standard output (None), which only boxes can go to."""
    folder = task == "segment"
    if out == "-":
        if folder:
            raise UserError("--out - (standard output) takes a detect run's COCO JSON; a "
                            "segment run writes a folder of mask PNGs, so give a folder.")
        return None
    target = Path(out).expanduser()
    if target.exists() and (target.is_dir() != folder):
        raise UserError(f"--out {str(target)!r} is a {'file' if folder else 'folder'}; a "
                        f"{task} run writes {'a folder of masks' if folder else 'a JSON file'}"
                        " there.")
    if target.exists() and not force and (target.is_file() or any(target.iterdir())):
        raise UserError(f"{str(target)!r} exists; pass --force to overwrite it, or choose "
                        "another --out.")
    return target


def _in_run_classes(data: SceneDataset, class_names: list[str]) -> SceneDataset:
    """A named scene dataset with its class indices in the run's order (other classes
    are one sentence)."""
    from types import SimpleNamespace

    from imgxfer.data.scenes import align_scene_classes

    run = SimpleNamespace(class_names=list(class_names), domain="the run")
    return align_scene_classes(data, run)  # type: ignore[arg-type]


def score(found: list[Any], data: SceneDataset, task: str) -> str:
    """The headline score of the predictions just made against ``data``'s annotations."""
    from imgxfer.tasks.dense import metrics
    from imgxfer.tasks.dense.evaluate import HEADLINE

    if task == "segment":
        # a dataset built for the run's task has its annotations (SceneDataset.tasks)
        scores = metrics.segmentation_metrics(torch.stack(found), cast(torch.Tensor, data.masks),
                                              data.class_names)
    else:
        scores = metrics.detection_metrics(found, cast(list[torch.Tensor], data.boxes),
                                           cast(list[torch.Tensor], data.box_labels),
                                           data.class_names)
    key, label = HEADLINE[task]
    return f"{label} {scores[key]:.3f}"
