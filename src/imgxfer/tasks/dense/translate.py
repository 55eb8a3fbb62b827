"""``--synthesis translate`` for dense runs: labelled source scenes turned into the
target's style by the run's generator, their masks and boxes kept (CyCADA's use on GTA
-> Cityscapes: pixel-level translation gives target-style images with labels for free).

The generator learns as in a classification run (:class:`imgxfer.data.dataset.GeneratorData`)
from the source scenes, the labelled target scenes and the unlabelled ones. A
generator's content loss follows image labels, so each scene is labelled with its
largest object's class (a scene without objects is translated, not learnt from); what
keeps the masks valid is that a translator changes style, not geometry (the GAN's
PixelDA translator keeps the image's layout). A dense run sets the generator's size to
the largest power of two at most the scenes' and 32 px
(:func:`imgxfer.tasks.dense.run.generator_side`); larger scenes are resized to it and back. Learning from and translating 32-px tiles of 64-px
scenes instead, at the digits' own scale, was measured and lost on the selection pair
(docs/benchmarks.md, "Translation at the digits' scale")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from imgxfer.core import runfolder
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import GeneratorData
from imgxfer.data.scenes import IGNORE, SceneDataset
from imgxfer.nn.preprocess import match_channels
from imgxfer.plugin.protocols import checkpoint_args
from imgxfer.run import artifacts
from imgxfer.tasks.classify.stages.generate import check_images

BATCH = 64  # scenes per edit call


def main_class(data: SceneDataset) -> torch.Tensor:
    """Each scene's largest object class: the most frequent object class of its mask,
    else the class of its largest box (-1 for a scene without objects)."""
    labels = torch.full((len(data),), -1, dtype=torch.long)
    for i in range(len(data)):
        if data.masks is not None:
            mask = data.masks[i]
            counts = torch.bincount(mask[(mask > 0) & (mask != IGNORE)].flatten() - 1,
                                    minlength=data.num_classes)
            labels[i] = int(counts.argmax()) if counts.sum() else -1
        elif data.boxes is not None and len(data.boxes[i]):
            assert data.box_labels is not None
            box = data.boxes[i]
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
            labels[i] = int(data.box_labels[i][area.argmax()])
    return labels


def translate_scenes(plan: Any, source: SceneDataset, folder: Path, progress: Progress,
                     resume: bool = False) -> tuple[SceneDataset, dict[str, Any]]:
    """Fit the plan's generator (continuing its training checkpoint with ``resume``, when
    it declares ``resumable``), translate every ``source`` scene, save the generator."""
    config, generator, split = plan.config, plan.generator, plan.split
    labels = main_class(source)
    data = generator_data(source, labels, split.labelled, split.unlabelled, split.test)
    started = time.perf_counter()
    budget = Budget(config.generator_steps or None, None).start()
    fitted = generator.fit(data, budget=budget, progress=progress, device=plan.device,
                           **checkpoint_args(generator, folder / runfolder.TRAINING_CHECKPOINT,
                                             resume))
    fit_seconds = time.perf_counter() - started
    images = _edit_all(generator, source, labels.clamp(min=0), config, plan.device)
    artifacts.save_generator(folder / runfolder.GENERATOR, config.generator, generator,
                             config.options["generator"], source.class_names)
    (folder / runfolder.TRAINING_CHECKPOINT).unlink(missing_ok=True)
    synthetic = source.with_images(images, f"translated-{source.domain}")
    return synthetic, {"name": config.generator, "synthesis": "translate",
                       "steps": fitted.steps, "translated_scenes": len(synthetic),
                       "fit_seconds": round(fit_seconds, 1)}


def generator_data(source: SceneDataset, labels: torch.Tensor, labelled: SceneDataset,
                   unlabelled: SceneDataset, test: SceneDataset) -> GeneratorData:
    """What the generator learns from: the source scenes and the labelled target ones
    that hold an object, each labelled with its :func:`main_class`
    (``labels``, for the source), and every unlabelled target one, at the test scenes'
    channels. A scene without objects has no class for the content loss: labelled as one,
    it would teach the translator to draw that class on background. It is still
    translated."""
    keep = require_objects(source, labels)
    shot_labels = main_class(labelled)
    shot_keep = shot_labels >= 0
    n, m = int(keep.sum()), int(shot_keep.sum())
    return GeneratorData(
        images=torch.cat([match_channels(source.images.tensor()[keep], int(test.images.shape[1])),
                          labelled.images.tensor()[shot_keep]]),
        labels=torch.cat([labels[keep], shot_labels[shot_keep]]),
        captions=[""] * (n + m),
        domains=[source.domain] * n + [test.domain] * m,
        class_names=list(source.class_names), target_domain=test.domain,
        synthesis="translate", unlabelled=unlabelled.images.tensor())


def require_objects(scenes: SceneDataset, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Which ``scenes`` hold an object (``labels``: their :func:`main_class`, if known);
    none is one sentence, since the generator would have nothing to learn from."""
    keep = (main_class(scenes) if labels is None else labels) >= 0
    if not keep.any():
        raise UserError(f"no {scenes.domain} scene holds an object, so there is nothing "
                        "for the generator to learn to translate.")
    return keep


def _edit_all(generator: Any, source: SceneDataset, labels: torch.Tensor, config: Any,
              device: torch.device) -> torch.Tensor:
    out = []
    for start in range(0, len(source), BATCH):
        rows = list(range(start, min(start + BATCH, len(source))))
        images = generator.edit(source.images[rows], labels[rows], [""] * len(rows),
                                seed=config.seed + start, device=device)
        images = check_images(images, len(rows), config.generator, "edit")
        if images.shape[-2:] != source.images.shape[-2:]:  # a generator of another size
            images = torch.nn.functional.interpolate(
                images, size=tuple(source.images.shape[-2:]), mode="bilinear",
                antialias=True, align_corners=False).clamp(0, 1)
        out.append(images)
    return torch.cat(out)
