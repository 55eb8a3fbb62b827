"""Saving and rebuilding a dense run's trained models: ``model-<adapter>.safetensors``
per adapter, with what ``imgxfer predict`` needs to rebuild it from the run's
config.toml (task, head, classes, the scene size) and checks it against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from imgxfer.core.errors import UserError
from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
from imgxfer.nn.dense.model import DenseModel

PREFIX = "model-"
GLOB = "model-*.safetensors"


def model_file(adapter: str) -> str:
    return f"{PREFIX}{adapter.replace('/', '_')}.safetensors"


def save(folder: Path, adapter: str, model: DenseModel) -> Path:
    path = folder / model_file(adapter)
    meta = {"format": "imgxfer.tasks.dense", "adapter": adapter,
            "describe": json.dumps(model.describe())}
    atomic_save_tensors(path, model.state_dict(), meta)
    return path


def load(path: Path, encoder: Any) -> DenseModel:
    """The model saved in ``path``, on a freshly built ``encoder`` (the run's, from its
    config.toml); a file that is not a dense model or does not fit is one sentence."""
    tensors, meta = read_tensors(path)
    if meta.get("format") != "imgxfer.tasks.dense" or "describe" not in meta:
        raise UserError(f"{str(path)!r} is not a segmentation or detection model of imgxfer.")
    info = json.loads(meta["describe"])
    model = DenseModel(encoder, info["head"], info["classes"], tuple(info["size"]))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise UserError(f"{str(path)!r} does not fit the model its run's config.toml "
                        f"describes ({(lines or ['another architecture'])[0].rstrip('.')}); "
                        "was it saved by another version of imgxfer?") from None
    return model.eval()


def describe(path: Path) -> dict[str, Any]:
    _, meta = read_tensors(path)
    return cast(dict[str, Any], json.loads(meta["describe"]))
