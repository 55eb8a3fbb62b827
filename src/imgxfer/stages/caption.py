"""Stage 3: captions of the labelled images (they condition the generator), and at the
end of a run of the unlabelled target images, with the adapted classifier's guesses."""

from __future__ import annotations

from typing import Any

import torch

from imgxfer.plan import Plan
from imgxfer.training import predict_logits


def caption_labelled(plan: Plan) -> dict[str, list[str]]:
    """``{"source": [...], "target": [...]}``: one caption per source image and per
    labelled target shot."""
    source, split, captioner = plan.source, plan.split, plan.captioner
    target = split.test
    return {
        "source": captioner.caption(source.images, source.labels, class_names=source.class_names,
                                    domain=source.domain, description=source.description),
        "target": captioner.caption(split.labelled.images, split.labelled.labels,
                                    class_names=target.class_names, domain=target.domain,
                                    description=target.description),
    }


def caption_unlabelled(plan: Plan, classifier: Any) -> list[str]:
    """Captions of the unlabelled target images, which the captioner may complete with
    ``classifier``'s guesses (they are documented in captions.jsonl)."""
    split, device = plan.split, plan.device
    target = split.test

    def guess(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(classifier, plan.encoder.preprocess(images), device).softmax(1)

    return plan.captioner.caption(split.unlabelled.images, None, class_names=target.class_names,
                                  domain=target.domain, description=target.description,
                                  classifier=guess)
