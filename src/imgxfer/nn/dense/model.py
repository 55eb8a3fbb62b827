"""The model of a dense run: a registered encoder read as a feature pyramid, and a head.

:data:`HEADS` names the heads a run can choose (``--head``); each declares its task.
A head maps the pyramid's maps to its outputs and knows its ``loss``, ``predict`` and
``pseudo_labels``, so adapters train any dense model without knowing its task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from imgxfer.core.errors import UserError
from imgxfer.nn.dense.features import Pyramid


@dataclass(frozen=True)
class Head:
    task: str
    make: Callable[..., nn.Module]  # (channels, strides, num_classes) -> head module
    description: str


def _segmentation(name: str) -> Callable[..., nn.Module]:
    def make(channels: list[int], strides: list[int], num_classes: int) -> nn.Module:
        from imgxfer.nn.dense import segmentation

        head: nn.Module = getattr(segmentation, name)(channels, strides, num_classes)
        return head
    return make


class _HeadOps(Protocol):
    """What a dense model asks of its head module besides its forward."""

    def loss(self, outputs: Any, target: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def predict(self, outputs: Any) -> Any: ...

    def pseudo_labels(self, outputs: Any, threshold: float) -> dict[str, Any]: ...


def _centernet(channels: list[int], strides: list[int], num_classes: int) -> nn.Module:
    from imgxfer.nn.dense.detection import DetectionHead

    return DetectionHead(channels, strides, num_classes)


HEADS: dict[str, Head] = {
    "unet": Head("segment", _segmentation("UNetHead"),
                 "small U-Net decoder over every stage of the encoder (default)"),
    "fcn": Head("segment", _segmentation("FCNHead"), "torchvision's FCN head"),
    "deeplabv3": Head("segment", _segmentation("DeepLabV3Head"),
                      "torchvision's DeepLabV3 head (ASPP)"),
    "lraspp": Head("segment", _segmentation("LRASPPHead"), "torchvision's LR-ASPP head"),
    "centernet": Head("detect", _centernet,
                      "anchor-free CenterNet head: class heatmaps, box sizes (default)"),
}
DEFAULT_HEAD = {"segment": "unet", "detect": "centernet"}


def check_head(name: str, task: str) -> str:
    """The head a run of ``task`` uses (``""``: the task's default); a head of another
    task or an unknown one is one sentence."""
    name = name or DEFAULT_HEAD[task]
    fitting = [n for n, h in HEADS.items() if h.task == task]
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; heads for --task {task}: {', '.join(fitting)}.")
    if HEADS[name].task != task:
        raise UserError(f"head {name!r} is for --task {HEADS[name].task}, not --task {task}; "
                        f"heads for {task}: {', '.join(fitting)}.")
    return name


class DenseModel(nn.Module):
    """``encoder`` (any registered one) as a pyramid at ``size``, and the head ``head``
    for ``class_names``. ``forward`` takes images preprocessed by ``preprocess`` (the
    encoder's: channels and normalisation; scenes keep their size, which the encoder's
    ``input_size`` is set to)."""

    def __init__(self, encoder: nn.Module, head: str, class_names: list[str],
                 size: tuple[int, int]) -> None:
        super().__init__()
        self.pyramid = Pyramid(encoder, size)
        self.head_name, self.task = head, HEADS[head].task
        self.class_names = list(class_names)
        self.size = tuple(size)
        self.head = HEADS[head].make(self.pyramid.channels, self.pyramid.strides,
                                     len(class_names))

    @property
    def encoder(self) -> nn.Module:
        return self.pyramid.encoder

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        preprocess = cast(Callable[[torch.Tensor], torch.Tensor], self.encoder.preprocess)
        return preprocess(images)

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.pyramid(x), tuple(x.shape[-2:]))

    def loss(self, outputs: Any, target: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return cast(_HeadOps, self.head).loss(outputs, target)

    def predict(self, outputs: Any) -> Any:
        return cast(_HeadOps, self.head).predict(outputs)

    def pseudo_labels(self, outputs: Any, threshold: float) -> dict[str, Any]:
        return cast(_HeadOps, self.head).pseudo_labels(outputs, threshold)

    def describe(self) -> dict[str, Any]:
        """What metrics.json and the saved model record to rebuild it."""
        return {"task": self.task, "head": self.head_name, "classes": self.class_names,
                "size": list(self.size), "pyramid": {"layers": self.pyramid.layers,
                                                     "strides": self.pyramid.strides}}
