"""Stage 3: captions of the labelled images (they condition the generator), and at the
end of a run of the unlabelled target images, with the adapted classifier's guesses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from imgxfer.data.images import CHUNK, ImageStore
from imgxfer.nn.training import predict_logits
from imgxfer.plugin.protocols import declared

if TYPE_CHECKING:  # the plan imports the stages through its run
    from imgxfer.tasks.classify.plan import Plan


def caption_labelled(plan: Plan) -> dict[str, list[str]]:
    """``{"source": [...], "target": [...]}``: one caption per source image and per
    labelled target shot."""
    source, split, captioner = plan.source, plan.split, plan.captioner
    target = split.test
    on_device(captioner, plan.device)
    return {
        "source": in_chunks(captioner, source.images, source.labels,
                            class_names=source.class_names, domain=source.domain,
                            description=source.description),
        "target": in_chunks(captioner, split.labelled.images, split.labelled.labels,
                            class_names=target.class_names, domain=target.domain,
                            description=target.description),
    }


def on_device(captioner: Any, device: torch.device) -> None:
    """Move a captioner that computes with a model (it declares ``to``) to the run's
    device; the template captioner has nothing to move."""
    move = declared(captioner, "to", "captioners")
    if move is not None:
        move(device)


def in_chunks(captioner: Any, images: ImageStore, labels: torch.Tensor | None,
              **kwargs: Any) -> list[str]:
    """``captioner.caption`` (which takes a tensor) over a store, :data:`CHUNK` images at a
    time, so a streamed dataset is never in memory whole; captioners caption each image
    on its own (imgxfer.plugin.protocols.Captioner), so chunking changes no caption."""
    out: list[str] = []
    for start, batch in zip(range(0, len(images), CHUNK), images.chunks(CHUNK), strict=True):
        part = None if labels is None else labels[start:start + CHUNK]
        out += captioner.caption(batch, part, **kwargs)
    return out


def caption_unlabelled(plan: Plan, classifier: Any) -> list[str]:
    """Captions of the unlabelled target images, which the captioner may complete with
    ``classifier``'s guesses (they are documented in captions.jsonl)."""
    split, device = plan.split, plan.device
    target = split.test
    on_device(plan.captioner, device)

    def guess(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(classifier, images, device, preprocess=plan.encoder.preprocess).softmax(1)

    return in_chunks(plan.captioner, split.unlabelled.images, None,
                     class_names=target.class_names, domain=target.domain,
                     description=target.description, classifier=guess)
