"""Images and datasets: image stores (:mod:`~imgxfer.data.images`), labelled sets and
the few-shot split (:mod:`~imgxfer.data.dataset`), scenes with masks and boxes, image
files, class names, the feature cache and what dataset factories share.

Until imgxfer 0.1 ``imgxfer.data`` was the module that is now ``imgxfer.data.dataset``;
its names are forwarded from here, with a DeprecationWarning, for one release."""

from __future__ import annotations

import warnings
from typing import Any

_OLD_MODULE = ("ImageDataset", "Split", "few_shot_split", "class_order", "align_classes",
               "separate_origins", "TransferData", "GeneratorData")


def __getattr__(name: str) -> Any:
    if name in _OLD_MODULE:
        from imgxfer.data import dataset

        warnings.warn(f"imgxfer.data.{name} is now imgxfer.data.dataset.{name}; the old "
                      "path goes in imgxfer 0.3.", DeprecationWarning, stacklevel=2)
        return getattr(dataset, name)
    raise AttributeError(f"module 'imgxfer.data' has no attribute {name!r}")
