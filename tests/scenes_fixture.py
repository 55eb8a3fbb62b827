"""Tiny scene datasets for the dense tests (:func:`imgxfer.plugin.testing.tiny_scenes`),
registered by the tests' fake plugin as ``tiny-scenes`` and ``tiny-scenes-inverted``."""

from __future__ import annotations

from imgxfer.data.scenes import SceneDataset
from imgxfer.plugin.testing import tiny_scenes

SCENE_CLASSES = ["square", "bar"]


def register_tiny_scenes(register) -> None:
    def source(n: int = 40, seed: int = 0) -> SceneDataset:
        return tiny_scenes("tiny-scenes", n, seed=seed)

    def target(n: int = 40, seed: int = 0) -> SceneDataset:
        return tiny_scenes("tiny-scenes-inverted", n, seed=seed + 7, invert=True)

    for factory in (source, target):
        factory.tasks = ("segment", "detect")
    register("tiny-scenes", source, description="squares and bars (source scenes)")
    register("tiny-scenes-inverted", target, description="inverted (target scenes)")
