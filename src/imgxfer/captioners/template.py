"""`template`: captions from the label (or a classifier's prediction) and the domain."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from imgxfer.errors import UserError


class TemplateCaptioner:
    """Label or prediction + domain -> text, e.g. "a handwritten digit seven, domain digits".

    Unlabelled images are described by the classifier's prediction and its confidence
    when a classifier is given ("(probably seven, p=0.93)"), otherwise as of unknown class.
    Deterministic: the same images, labels and classifier give the same captions.
    """

    def __init__(self, template: str = "a {description} {label}, domain {domain}") -> None:
        try:
            template.format(description="", label="", domain="")
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(
                f"captioner template {template!r} is invalid ({exc}); it may use the fields "
                "{description}, {label} and {domain}."
            ) from None
        self.template = template

    def caption(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None,
                *, class_names: Sequence[str], domain: str, description: str = "",
                classifier: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[str]:
        description = description or "image of a"
        if labels is not None:
            texts = [class_names[int(y)] for y in labels]
        elif classifier is not None:
            proba = classifier(images)
            conf, pred = proba.max(1)
            texts = [f"(probably {class_names[int(p)]}, p={c:.2f})" for p, c in zip(pred, conf)]
        else:
            texts = ["of unknown class"] * len(images)
        return [self.template.format(description=description, label=t, domain=domain)
                for t in texts]
