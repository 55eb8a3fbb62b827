"""Saving the trained classifiers and generator of a run with the metadata that
``imgxfer predict`` and ``imgxfer generate`` rebuild and check them from. The file names
and how files are written (atomically, with checksums) are ``runfolder``'s;
docs/architecture.md ("The run folder") describes each file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch

from imgxfer.core.runfolder import atomic_save_tensors
from imgxfer.data.images import ImageStore, as_store
from imgxfer.nn.classifier import Classifier
from imgxfer.plugin.protocols import Encoder, declared

FINGERPRINT_IMAGES = (2, 3, 32, 32)


@torch.inference_mode()
def fingerprint(model: Classifier, device: torch.device) -> list[list[float]]:
    """The logits of an eval-mode classifier for two fixed noise images: saved with it,
    so a rebuilt copy (``imgxfer predict``) can prove it computes the same function
    (weights that load into another architecture variant would not)."""
    x = torch.rand(FINGERPRINT_IMAGES, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    # Classifier.encoder is typed nn.Module; its preprocess is the Encoder protocol's.
    logits = model(cast(Encoder, model.encoder).preprocess(x.to(device))).float().cpu()
    model.train(was_training)
    return [[round(v, 5) for v in row] for row in logits.tolist()]


def image_brightness(images: torch.Tensor | ImageStore) -> list[float]:
    """Mean and std over images of each image's mean pixel value: saved with a
    classifier, so `imgxfer predict` can tell images far darker or brighter than the
    run's target images (e.g. dark ink on light paper for a light-on-dark target)."""
    store = as_store(images)
    per_image = (torch.cat([x.flatten(1).mean(1) for x in store.chunks()]) if len(store)
                 else torch.zeros(1))
    return [round(float(per_image.mean()), 4), round(float(per_image.std(correction=0)), 4)]


def save_classifier(path: Path, model: Classifier, *, encoder: str, adapter: str,
                    class_names: list[str], brightness: list[float], layout: Any,
                    device: torch.device) -> None:
    """A trained classifier with what ``imgxfer predict`` checks when it rebuilds it."""
    meta = {"encoder": encoder, "adapter": adapter, "classes": json.dumps(list(class_names)),
            "target_brightness": json.dumps(brightness), "target_layout": layout,
            "fingerprint": json.dumps(fingerprint(model, device))}
    atomic_save_tensors(path, model.state_dict(), meta)


def save_generator(path: Path, name: str, generator: Any, options: dict[str, Any],
                   class_names: list[str]) -> None:
    """A trained generator with the options it actually used (defaults included, when it
    can say) and the class names, so `imgxfer generate` rebuilds it even if defaults
    change later."""
    resolved = declared(generator, "resolved_options", "generators")
    used = resolved() if resolved is not None else options
    atomic_save_tensors(path, generator.state_dict(),
                        {"component": name, "options": json.dumps(used),
                         "classes": json.dumps(list(class_names))})
