"""imgxfer: image transfer learning with generative data augmentation.

This module is the plugin API: everything a plugin needs is importable from ``imgxfer``
itself (``from imgxfer import hookimpl, Budget, FitResult``), and the first-party plugins
import nothing else. It holds:

- the hooks: ``hookimpl`` and ``Register`` (what a ``register_*`` hook receives);
- the component protocols (``Encoder``, ``Captioner``, ``Generator``, ``Adapter``) and
  what their methods take and return: ``Budget``, ``Progress``/``NullProgress``,
  ``FitResult``, ``Classifier``, the data classes (``ImageDataset``, ``GeneratorData``,
  ``TransferData``, ``SceneDataset``), ``UserError`` for a user's mistake;
- helpers a component may reuse: image preprocessing, state-dict and weight files, the
  generator training loop and its checkpoints, data-parallel steps.

The contract kit for a plugin's tests is :mod:`imgxfer.plugin.testing`. Running the
whole chain from Python: :func:`imgxfer.tasks.run`. The layers behind these names are
drawn in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from imgxfer.core import compat
from imgxfer.plugin.hookspecs import Register, hookimpl

# The version is written once, in pyproject.toml; an installed imgxfer (wheel or editable)
# carries it in its metadata. A source tree put on sys.path without installing it has no
# metadata, and says so rather than guess.
UNKNOWN_VERSION = "0+unknown"
try:
    __version__ = metadata.version("imgxfer")
except metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = UNKNOWN_VERSION

# Where each public name lives; imported on first use, so `import imgxfer` (every plugin
# does it) stays free of torch until a component needs it. The block under TYPE_CHECKING
# gives type checkers the same names (tests/test_sdk.py keeps the two equal).
_LAZY = {
    "core.errors": ["UserError"],
    "core.budget": ["Budget"],
    "core.progress": ["Progress", "NullProgress"],
    "core.distributed": ["backward_step", "seed_offset"],
    "core.processes": ["is_main", "world_size"],
    "core.runfolder": ["atomic_save_tensors", "read_tensors"],
    "data.dataset": ["ImageDataset", "GeneratorData", "TransferData"],
    "data.scenes": ["SceneDataset"],
    "nn.classifier": ["Classifier", "rebuild"],
    "nn.preprocess": ["match_channels", "prepare"],
    "nn.training": ["predict_logits"],
    "nn.weights": ["check_model_folder", "hub_cache_file", "reachable", "read_state_dict"],
    "nn.text": ["HashedTextEncoder", "token_ids"],
    "nn.generator_training": [
        "TrainingState", "Checkpointing", "train_steps", "check_fit_inputs",
        "check_training_metadata", "data_signature", "draw_weights", "load_optimizer",
        "load_progress", "optimizer_tensors", "progress_tensors", "strip_prefix",
        "to_model_range"],
    "plugin.protocols": ["Encoder", "Captioner", "Generator", "Adapter", "FitResult"],
    "components.captioners.template": ["TemplateCaptioner", "DEFAULT_TEMPLATE"],
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "__version__", "hookimpl", "Register", "UserError", "Budget", "Progress",
    "NullProgress", "backward_step", "seed_offset", "is_main", "world_size",
    "atomic_save_tensors", "read_tensors", "ImageDataset", "GeneratorData",
    "TransferData", "SceneDataset", "Classifier", "rebuild", "match_channels",
    "prepare", "predict_logits", "check_model_folder", "hub_cache_file", "reachable",
    "read_state_dict", "HashedTextEncoder", "token_ids", "TrainingState",
    "Checkpointing", "train_steps", "check_fit_inputs", "check_training_metadata",
    "data_signature", "draw_weights", "load_optimizer", "load_progress",
    "optimizer_tensors", "progress_tensors", "strip_prefix", "to_model_range",
    "Encoder", "Captioner", "Generator", "Adapter", "FitResult", "TemplateCaptioner",
    "DEFAULT_TEMPLATE",
]

if TYPE_CHECKING:
    from imgxfer.components.captioners.template import DEFAULT_TEMPLATE, TemplateCaptioner
    from imgxfer.core.budget import Budget
    from imgxfer.core.distributed import backward_step, seed_offset
    from imgxfer.core.errors import UserError
    from imgxfer.core.processes import is_main, world_size
    from imgxfer.core.progress import NullProgress, Progress
    from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
    from imgxfer.data.dataset import GeneratorData, ImageDataset, TransferData
    from imgxfer.data.scenes import SceneDataset
    from imgxfer.nn.classifier import Classifier, rebuild
    from imgxfer.nn.generator_training import (
        Checkpointing,
        TrainingState,
        check_fit_inputs,
        check_training_metadata,
        data_signature,
        draw_weights,
        load_optimizer,
        load_progress,
        optimizer_tensors,
        progress_tensors,
        strip_prefix,
        to_model_range,
        train_steps,
    )
    from imgxfer.nn.preprocess import match_channels, prepare
    from imgxfer.nn.text import HashedTextEncoder, token_ids
    from imgxfer.nn.training import predict_logits
    from imgxfer.nn.weights import check_model_folder, hub_cache_file, reachable, read_state_dict
    from imgxfer.plugin.protocols import Adapter, Captioner, Encoder, FitResult, Generator

compat.install()


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"imgxfer.{_HOME[name]}"), name)
    raise AttributeError(f"module 'imgxfer' has no attribute {name!r}")
