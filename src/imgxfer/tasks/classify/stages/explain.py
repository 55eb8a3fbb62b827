"""Explanations for the run report, made inside the adapt stage: the run keeps only its
first adapter's classifier, so the class-activation maps of every compared adapter are
drawn while each classifier still exists. A few target test images per class, chosen
by the run's classifier (correctly and wrongly classified), are explained under every
adapter; the result is one figure, ``explanations.png``, and a record in metrics.json
(``explanations``) from which the report describes it, also when rebuilt later."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from imgxfer.core import runfolder
from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset
from imgxfer.plugin.protocols import Encoder
from imgxfer.tasks.classify import saliency as explain

log = logging.getLogger("imgxfer")

# Images per class and kind (correct, wrong): few, so a run spends seconds, not minutes,
# here; fewer when many adapters put several maps beside each image.
PER_CLASS = 2
PER_CLASS_MANY_ADAPTERS = 1
MAX_CLASSES = 10  # rows of the figure; further classes are left out
TILE = 80  # pixels of each image in the figure
GAP, SPACE = 6, 16  # between the tiles of one image, between images
# Text sizes in points (at the figure's 100 dpi, 1 pt = 1.39 px): the report shows the
# figure at most REPORT_WIDTH px wide, where a 9-pt label is still about 10 px tall
# (at 5.5 pt the labels were 6 px: issue 29, item 9).
LABEL_PT, HEAD_PT, CLASS_PT = 9, 9.5, 11
REPORT_WIDTH = 1100  # report.py's body max-width


class Explainer:
    """Collects the maps of the same test images under each adapter's classifier
    (:meth:`add`, in the run's adapter order), then draws and records them (:meth:`finish`)."""

    def __init__(self, test: ImageDataset, adapters: int) -> None:
        self.test = test
        self.per_class = PER_CLASS if adapters <= 2 else PER_CLASS_MANY_ADAPTERS
        self.index: list[int] | None = None
        self.correct: list[bool] = []
        self.maps: dict[str, explain.Explanation] = {}
        self.skipped = ""
        self.seconds = 0.0  # spent here (metrics.json's timings_s "explanations")

    def add(self, name: str, model: torch.nn.Module,
            predicted: torch.Tensor | None = None) -> None:
        """Explain the chosen images under ``model``; the first model added chooses them,
        from ``predicted`` (its classes of the test images, when known) or its own pass."""
        if self.skipped or not len(self.test):
            return
        t0 = time.perf_counter()
        try:
            if self.index is None:  # the run's classifier chooses the images
                self.index, self.correct = choose_images(model, self.test, self.per_class,
                                                         predicted)
            images = self.test.images[torch.tensor(self.index, dtype=torch.long)]
            self.maps[name] = explain.explain(model, images)
        except UserError as error:  # e.g. an encoder without a spatial layer
            self.skipped = str(error)
            log.info("no explanations in the report: %s", error)
        self.seconds += time.perf_counter() - t0

    def finish(self, folder: Path) -> dict[str, Any] | None:
        """Write ``explanations.png``; the record for metrics.json, or None without maps."""
        if not self.maps or not self.index:
            return None
        t0 = time.perf_counter()
        first = next(iter(self.maps.values()))
        record = {"method": first.method, "layer": first.layer,
                  "figure": runfolder.EXPLANATIONS, "adapters": list(self.maps),
                  "images": self._rows()}
        runfolder.atomic_write_bytes(folder / runfolder.EXPLANATIONS, self._figure(record))
        self.seconds += time.perf_counter() - t0
        return record

    def _rows(self) -> list[dict[str, Any]]:
        names = self.test.class_names
        rows = []
        for k, i in enumerate(self.index or []):
            rows.append({"index": i, "label": names[int(self.test.labels[i])],
                         "correct": self.correct[k],
                         "predicted": {a: names[e.explained[k]] for a, e in self.maps.items()},
                         "confidence": {a: round(float(e.proba[k].max()), 4)
                                        for a, e in self.maps.items()}})
        return rows

    def _figure(self, record: dict[str, Any]) -> bytes:
        images = self.test.images[torch.tensor(self.index, dtype=torch.long)]
        tiles = [[tile(images[k])] + [tile(images[k], e.maps[k]) for e in self.maps.values()]
                 for k in range(len(images))]
        return figure(tiles, record, self.per_class)


def choose_images(model: torch.nn.Module, test: ImageDataset, per_class: int,
                  predicted: torch.Tensor | None = None) -> tuple[list[int], list[bool]]:
    """Test images to explain, class by class (at most MAX_CLASSES): the first
    ``per_class`` that ``model`` classifies correctly, then the first it gets wrong;
    with whether each is correct."""
    from imgxfer.nn.training import predict_logits

    if predicted is None:  # the adapt stage passes the evaluation's: no second pass
        predicted = predict_logits(model, test.images, next(model.parameters()).device,
                                   preprocess=cast(Encoder, model.encoder).preprocess).argmax(1)
    predicted = predicted.cpu()
    index, correct = [], []
    for c in range(min(len(test.class_names), MAX_CLASSES)):
        of_class = test.labels.cpu() == c
        for right in (True, False):
            hits = torch.nonzero(of_class & ((predicted == c) == right)).flatten()[:per_class]
            index += hits.tolist()
            correct += [right] * len(hits)
    return index, correct


def tile(image: torch.Tensor, cam: np.ndarray | None = None) -> np.ndarray:
    """One image (with its map laid over it) as uint8 [TILE, TILE, 3]."""
    from PIL import Image

    array = explain.rgb(image) if cam is None else explain.overlay(image, cam)

    return np.asarray(Image.fromarray(array).resize((TILE, TILE), Image.Resampling.NEAREST))


ROW = TILE + 36  # a row: its images and, under each map, two lines of LABEL_PT text


def figure(tiles: list[list[np.ndarray]], record: dict[str, Any], per_class: int) -> bytes:
    """The images in one mosaic (one row per class: correct images, then wrong ones; each
    image followed by its map under every adapter), labelled with matplotlib. One
    ``imshow`` of the whole mosaic: an axis per tile would cost seconds."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(r["label"] for r in record["images"]))
    block = len(tiles[0]) * (TILE + GAP) - GAP + SPACE  # one image and its maps
    mosaic = np.full((len(classes) * ROW, 2 * per_class * block, 3), 255, np.uint8)
    inches = (mosaic.shape[1] / 100 + 1.2, mosaic.shape[0] / 100 + 0.5)  # at dpi 100
    fig = plt.figure(figsize=inches)
    ax = fig.add_axes((1.2 / inches[0], 0, 1 - 1.2 / inches[0], 1 - 0.5 / inches[1]))
    for (y, x), images, text in _placed(tiles, record, classes, per_class, block):
        for t, image in enumerate(images):
            mosaic[y:y + TILE, x + t * (TILE + GAP):x + t * (TILE + GAP) + TILE] = image
        for t, line in enumerate(text, start=1):
            ax.text(x + t * (TILE + GAP) + TILE / 2, y + TILE + 2, line, ha="center",
                    va="top", fontsize=LABEL_PT)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for r, name in enumerate(classes):
        ax.text(-6, r * ROW + TILE / 2, name, ha="right", va="center", fontsize=CLASS_PT)
    for slot in range(2 * per_class):
        kind = "correct" if slot < per_class else "wrong"
        for t, head in enumerate([f"image\n({kind})"] + record["adapters"]):
            ax.text(slot * block + t * (TILE + GAP) + TILE / 2, -3, head, ha="center",
                    va="bottom", fontsize=HEAD_PT)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _placed(tiles: list[list[np.ndarray]], record: dict[str, Any], classes: list[str],
            per_class: int, block: int
            ) -> Iterator[tuple[tuple[int, int], list[np.ndarray], list[str]]]:
    """For each image: its (y, x) in the mosaic (its class's row; the slots of correct
    images first, then those of wrong ones), its tiles, and the text under each map
    (that adapter's prediction and probability)."""
    rows = record["images"]
    for k, (row, images) in enumerate(zip(rows, tiles, strict=True)):
        same = sum(1 for j in range(k) if rows[j]["label"] == row["label"]
                   and rows[j]["correct"] == row["correct"])
        slot = same + (0 if row["correct"] else per_class)
        text = [f"{_fit(row['predicted'][a])}\n{row['confidence'][a]:.2f}"
                for a in record["adapters"]]
        yield (classes.index(row["label"]) * ROW, slot * block), images, text


def _fit(name: str, most: int = 11) -> str:
    """A class name short enough that two neighbouring labels under LABEL_PT do not touch."""
    return name if len(name) <= most else name[:most - 1] + "…"
