"""Scene datasets: images with per-pixel masks and/or object boxes, what the dense tasks
(``--task segment`` and ``--task detect``) train and test on.

Conventions (the same for every reader and every model):

- ``class_names`` are the *object* classes, without a background entry.
- ``masks`` ``[N, H, W]`` int64: 0 is background, ``k`` (1..C) is ``class_names[k - 1]``,
  :data:`IGNORE` (255) is a pixel no loss or metric counts (VOC's object borders).
- ``boxes[i]`` ``[K_i, 4]`` float32: the objects of image ``i`` as ``x0, y0, x1, y1``
  in pixels of the image (``x1``/``y1`` exclusive, COCO's ``x, y, w, h`` turned into
  corners); ``box_labels[i]`` ``[K_i]`` int64 indexes ``class_names``.

A dataset serves the tasks its annotations allow (:attr:`SceneDataset.tasks`):
``segment`` when it has masks, ``detect`` when it has boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from imgxfer.core.errors import UserError
from imgxfer.data.dataset import class_order
from imgxfer.data.images import ImageStore, as_store

IGNORE = 255  # a mask value that no loss and no metric counts
DENSE_TASKS = ("segment", "detect")


@dataclass
class SceneDataset:
    images: ImageStore  # a tensor is accepted and wrapped
    class_names: list[str]
    domain: str
    masks: torch.Tensor | None = None
    boxes: list[torch.Tensor] | None = None
    box_labels: list[torch.Tensor] | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)
    paths: list[str] | None = None  # the file each image was read from, if any

    if TYPE_CHECKING:
        # For type checkers only: the generated __init__, whose ``images`` may also be a
        # tensor (__post_init__ wraps it). Keep it in step with the fields above.
        def __init__(self, images: ImageStore | torch.Tensor, class_names: list[str],
                     domain: str, masks: torch.Tensor | None = None,
                     boxes: list[torch.Tensor] | None = None,
                     box_labels: list[torch.Tensor] | None = None, description: str = "",
                     notes: list[str] = ..., paths: list[str] | None = None) -> None: ...

    def __post_init__(self) -> None:
        self.images = as_store(self.images)
        n = len(self.images)
        if not self.class_names:
            raise UserError(f"dataset {self.domain!r} names no object classes.")
        if self.masks is None and self.boxes is None:
            raise ValueError("a scene dataset needs masks, boxes or both")
        if self.masks is not None:
            self.masks = self.masks.long()
            if self.masks.shape[0] != n or self.masks.shape[-2:] != self.images.shape[-2:]:
                raise ValueError(f"masks {tuple(self.masks.shape)} do not match images "
                                 f"{tuple(self.images.shape)}")
        if (self.boxes is None) != (self.box_labels is None):
            raise ValueError("boxes and box_labels come together")
        if self.boxes is not None:
            assert self.box_labels is not None
            if len(self.boxes) != n or len(self.box_labels) != n:
                raise ValueError("boxes, box_labels and images differ in length")
            self.boxes = [b.float().reshape(-1, 4) for b in self.boxes]
            self.box_labels = [lab.long().reshape(-1) for lab in self.box_labels]
        if self.paths is not None and len(self.paths) != n:
            raise ValueError("paths and images differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Object classes (a segmentation model predicts one more: background)."""
        return len(self.class_names)

    @property
    def tasks(self) -> frozenset[str]:
        """The dense tasks its annotations allow."""
        return frozenset(({"segment"} if self.masks is not None else set())
                         | ({"detect"} if self.boxes is not None else set()))

    def subset(self, index: torch.Tensor | list[int]) -> SceneDataset:
        rows = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        pick: Callable[[list[Any] | None], list[Any] | None] = (
            lambda items: None if items is None else [items[i] for i in rows])
        return SceneDataset(
            self.images.subset(rows), list(self.class_names), self.domain,
            None if self.masks is None else self.masks[rows], pick(self.boxes),
            pick(self.box_labels), self.description, list(self.notes), pick(self.paths))

    def with_images(self, images: torch.Tensor | ImageStore, domain: str) -> SceneDataset:
        """The same annotations over other images of the same size (translated ones)."""
        return SceneDataset(images, list(self.class_names), domain, self.masks, self.boxes,
                            self.box_labels, self.description, list(self.notes))

    def objects_per_class(self) -> list[int]:
        """How many objects of each class there are: boxes per class when the dataset has
        boxes, else the images in which the class has mask pixels (a mask does not say
        how many objects it covers)."""
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        if self.box_labels is not None:
            for labels in self.box_labels:
                counts += torch.bincount(labels, minlength=self.num_classes)
        elif self.masks is not None:
            for mask in self.masks:
                present = torch.unique(mask[(mask > 0) & (mask != IGNORE)]) - 1
                counts[present] += 1
        return counts.tolist()


@dataclass
class SceneSplit:
    """A target scene dataset divided for few-shot transfer (disjoint parts)."""

    labelled: SceneDataset
    unlabelled: SceneDataset
    test: SceneDataset


def scene_split(data: SceneDataset, shots: int, *, test_fraction: float = 0.3,
                seed: int = 0) -> SceneSplit:
    """Seeded split: a ``test_fraction`` of the scenes for testing, then ``shots``
    labelled scenes (scenes, not objects per class: a scene holds several classes), and
    the rest unlabelled."""
    if shots < 0:
        raise UserError(f"--shots must be zero or more, got {shots}.")
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    n = len(data)
    n_test = max(1, round(n * test_fraction))
    if n < n_test + shots + 1:
        raise UserError(f"{data.domain!r} has {n} scenes: too few for {shots} labelled "
                        f"scenes plus {n_test} held out for testing (at most "
                        f"{max(0, n - n_test - 1)} shots).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return SceneSplit(data.subset(order[n_test:n_test + shots]),
                      data.subset(order[n_test + shots:]), data.subset(order[:n_test]))


def align_scene_classes(source: SceneDataset, target: SceneDataset) -> SceneDataset:
    """``source`` with its class indices (masks and box labels) following the target's
    class names; different class sets are one sentence."""
    if source.class_names == target.class_names:
        return source
    order = class_order(source, target)
    masks = None
    if source.masks is not None:  # 0 and IGNORE stay, k -> order[k - 1] + 1
        lut = torch.arange(256)
        lut[1:len(order) + 1] = order + 1
        masks = lut[source.masks]
    labels = None if source.box_labels is None else [order[b] for b in source.box_labels]
    return SceneDataset(source.images, list(target.class_names), source.domain, masks,
                        source.boxes, labels, source.description, list(source.notes),
                        source.paths)

