"""Tiny scene datasets for the dense tests: squares and bars on a canvas, with exact
masks and boxes; ``invert`` makes a shifted domain (dark objects on a light canvas)."""

from __future__ import annotations

import torch

from imgxfer.scenes import SceneDataset

SCENE_CLASSES = ["square", "bar"]


def tiny_scenes(domain: str, n: int = 40, size: int = 32, seed: int = 0,
                invert: bool = False) -> SceneDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    boxes, labels = [], []
    for i in range(n):
        found, kinds = [], []
        for half in (0, 1):  # one object per half of the canvas, so they never overlap
            kind = int(torch.randint(2, (1,), generator=g))
            h, w = (8, 8) if kind == 0 else (4, 12)
            y = int(torch.randint(0, size - h, (1,), generator=g))
            x0 = half * size // 2
            x = x0 + int(torch.randint(0, size // 2 - w + 1, (1,), generator=g))
            images[i, 0, y:y + h, x:x + w] = 1
            masks[i, y:y + h, x:x + w] = kind + 1
            found.append([x, y, x + w, y + h])
            kinds.append(kind)
        boxes.append(torch.tensor(found, dtype=torch.float32))
        labels.append(torch.tensor(kinds))
    images = (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    if invert:
        images = 1 - images
    return SceneDataset(images, list(SCENE_CLASSES), domain, masks, boxes, labels,
                        description="tiny shape scene")


def register_tiny_scenes(register) -> None:
    def source(n: int = 40, seed: int = 0) -> SceneDataset:
        return tiny_scenes("tiny-scenes", n, seed=seed)

    def target(n: int = 40, seed: int = 0) -> SceneDataset:
        return tiny_scenes("tiny-scenes-inverted", n, seed=seed + 7, invert=True)

    for factory in (source, target):
        factory.tasks = ("segment", "detect")
    register("tiny-scenes", source, description="squares and bars (source scenes)")
    register("tiny-scenes-inverted", target, description="inverted (target scenes)")
