"""A run's trained model as a file for serving: ONNX (for onnxruntime) or TorchScript, with
the run's preprocessing folded in, written only once it is shown to compute what the
run's model computes (`imgxfer export`; the tasks build the model and its card:
:mod:`imgxfer.tasks.classify.export`, :mod:`imgxfer.tasks.dense.export`).

The exported model takes images at the run's input size as a float tensor in [0, 1] or,
when exported with ``dtype="uint8"``, as uint8 in 0-255 (an ONNX graph has one input
type, so the type is chosen at export), in layout (N, C, H, W) with any N, and returns
the run's model's raw outputs: logits, or a detector's maps.

Which exporters, and why:

- ONNX: ``torch.onnx.export(dynamo=True)``, the exporter built on ``torch.export`` (the
  default since torch 2.9; it needs ``onnxscript``), with the batch axis dynamic. The
  TorchScript-based one (``dynamo=False``) also exports every built-in encoder, but torch
  warns that it will be removed. Measured on a busy 2-core CPU for a small CNN: the
  first export in a process took 7-12 s (mostly imports), later ones 2-5 s.
- TorchScript: ``torch.jit.trace``. Scripting cannot compile a dense model's feature
  pyramid, which catches stage outputs with forward hooks; a trace records the ops they
  run. The input size is fixed, so nothing that depends on it is lost, and the check
  runs a batch of another size than the trace's, so a batch size frozen into the
  graph is caught.

The check: the file is loaded back (onnxruntime, or ``torch.jit.load``) and run on
:func:`check_images` (seeded noise plus an all-black and an all-white image); every
output must be within :data:`TOLERANCE` of the run's model in eager torch, else the
export is one sentence and nothing is written. The run's model is the one its folder
records: the loaders check it against the logits saved with it (``fingerprint``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgxfer.core.errors import UserError, one_line
from imgxfer.core.runfolder import METRICS, atomic_write_bytes, atomic_write_text

# Format -> the usual file suffix (`imgxfer export` names its default --out with it).
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
DTYPES = ("float32", "uint8")
TOLERANCE = 1e-4  # the largest difference allowed from the run's model, any output
INPUT = "images"  # the ONNX graph's input name
METADATA = "imgxfer.json"  # TorchScript extra file with what the ONNX metadata holds
EXTRA = "export"  # pip install 'imgxfer[export]'
# The packages --format onnx imports: exporter (onnxscript, onnx) and checker.
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
CHECK_IMAGES = 5  # random images besides the black and the white one: 7, not the trace's 2
TRACE_IMAGES = 2  # torch.export treats a batch of 1 as a constant; 2 stays symbolic


@dataclass(frozen=True)
class InputSpec:
    """What the exported model takes: (N, ``channels``, *``size``) images of ``dtype``."""

    channels: int
    size: tuple[int, int]  # height, width
    dtype: str = "float32"

    def describe(self) -> dict[str, Any]:
        """The input as the file's metadata records it."""
        return {"name": INPUT, "shape": ["N", self.channels, *self.size], "dtype": self.dtype,
                "range": [0, 255] if self.dtype == "uint8" else [0, 1], "layout": "NCHW",
                "channels": "greyscale" if self.channels == 1 else "RGB"}


@dataclass(frozen=True)
class Exported:
    """A written export: the model file, its card and the check's largest difference."""

    path: Path
    card: Path
    max_difference: float
    check_images: int


class Served(nn.Module):
    """``model(preprocess(images))`` for images as :class:`InputSpec` describes them: the
    model as the run used it, with the encoder's preprocessing (channels, normalisation)
    in front and, for uint8 input, the scaling to [0, 1]. A model that returns a dict
    (a detector's maps) returns its ``outputs`` as a tuple in that order."""

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 outputs: Sequence[str], *, uint8: bool) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess  # a bound method of the model's encoder
        self.outputs = tuple(outputs)
        self.uint8 = uint8

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = images.float() / 255.0 if self.uint8 else images
        out = self.model(self.preprocess(x))
        if isinstance(out, Mapping):
            return tuple(out[name] for name in self.outputs)
        assert isinstance(out, torch.Tensor)
        return out


def check_format(fmt: str, dtype: str = "float32") -> None:
    """An unknown format or input type is one sentence, and so is a missing package of
    the ``export`` extra (checked before any model is loaded)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise UserError(f"unknown input type {dtype!r}; choose {' or '.join(DTYPES)}.")
    if fmt == "onnx":
        import importlib.util

        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise UserError(f"--format onnx needs {', '.join(missing)}, which "
                            f"{'is' if len(missing) == 1 else 'are'} not installed: "
                            f"pip install 'imgxfer[{EXTRA}]'.")


def read_metrics_json(folder: Path) -> dict[str, Any]:
    """The run's metrics.json (a card's figures), as JSON; a run without one did not
    finish, so its models were never evaluated."""
    path = folder / METRICS
    if not path.is_file():
        raise UserError(f"the run {str(folder)!r} has no {METRICS}: it did not finish, so its "
                        "models were never evaluated; resume it with `imgxfer run --resume` "
                        "and export it then.")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def card_path(out: Path) -> Path:
    """The model card beside ``out``: the same stem with ``.md`` (model.onnx -> model.md)."""
    return out.with_suffix(".md")


def check_images(spec: InputSpec, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded noise images of ``spec`` after an all-black and an all-white one
    (the extremes of the input range, where a wrong scaling shows most)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, *spec.size)
    if spec.dtype == "uint8":
        noise = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        top = torch.full((1, *shape[1:]), 255, dtype=torch.uint8)
    else:
        noise, top = torch.rand(shape, generator=g), torch.ones(1, *shape[1:])
    return torch.cat([torch.zeros_like(top), top, noise])


def export(served: Served, spec: InputSpec, fmt: str, out: Path, *,
           metadata: Mapping[str, Any], card: str) -> Exported:
    """Export ``served`` as ``fmt`` into ``out`` and ``card`` beside it, after the check;
    ``metadata`` (JSON values) goes into the file: ONNX metadata properties, or the
    TorchScript extra file :data:`METADATA`. Refused in one sentence, with nothing
    written, when the exporter fails or the file computes something else. ``fmt`` has
    passed :func:`check_format` (the task's exporter checks it before its card)."""
    served = served.cpu().eval()
    check = check_images(spec, CHECK_IMAGES, seed=0)
    data, got = _export_and_reload(served, spec, fmt, metadata, check)
    with torch.inference_mode():
        expected = served(check)
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    difference = max_difference(got, expected)
    if difference is None or difference > TOLERANCE:
        found = ("outputs of another shape" if difference is None
                 else f"outputs up to {difference:.2g} away")
        raise UserError(f"the {NAMES[fmt]} export does not compute what the run's model does "
                        f"({found} on {len(check)} check images, more than {TOLERANCE:g} "
                        "allowed), so nothing was written.")
    atomic_write_bytes(out, data)
    atomic_write_text(card_path(out), card + check_section(out.name, difference, len(check)))
    return Exported(out, card_path(out), difference, len(check))


NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _export_and_reload(served: Served, spec: InputSpec, fmt: str,
                       metadata: Mapping[str, Any], check: torch.Tensor
                       ) -> tuple[bytes, list[torch.Tensor]]:
    """The file's bytes, and its outputs on ``check`` once loaded back from them."""
    example = check_images(spec, TRACE_IMAGES, seed=1)[2:]  # noise only
    runtime = "onnxruntime" if fmt == "onnx" else "torch.jit"
    with warnings.catch_warnings():
        # torch.jit's deprecation notices and the tracer's warnings about Python values
        # frozen into the graph: the check is what tells a good file from a bad one.
        warnings.simplefilter("ignore")
        try:
            data = (_onnx_bytes(served, example, metadata) if fmt == "onnx"
                    else _torchscript_bytes(served, example, metadata))
        except Exception as error:  # torch.export / tracing: an op it cannot export
            raise UserError(f"the run's model could not be exported to {NAMES[fmt]} "
                            f"({type(error).__name__}: {one_line(error)}), so nothing was "
                            "written.") from None
        try:
            return data, (_run_onnx(data, check) if fmt == "onnx"
                          else _run_torchscript(data, check))
        except Exception as error:  # a graph the runtime cannot load or run
            raise UserError(f"the {NAMES[fmt]} export of the run's model does not run in "
                            f"{runtime} ({type(error).__name__}: {one_line(error)}), so "
                            "nothing was written.") from None


def check_section(name: str, difference: float, images: int) -> str:
    """The card's last section: how the file was checked when it was written."""
    return (f"\n## Export check\n\n`{name}` was loaded back when it was written and run on "
            f"{images} check images (an all-black one, an all-white one and {images - 2} "
            "of seeded noise, at the input size above): its outputs "
            + ("equal those of the run's own model in torch" if difference == 0 else
               f"differ from those of the run's own model in torch by at most {difference:.2g}")
            + f" (allowed: {TOLERANCE:g}).\n")


def max_difference(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]
                   ) -> float | None:
    """The largest absolute difference between two lists of outputs (NaN counts as
    infinitely far), or None when their number or shapes differ."""
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected,
                                                                           strict=True)):
        return None
    worst = 0.0
    for a, b in zip(got, expected, strict=True):
        diff = (a.float() - b.float()).abs().nan_to_num(nan=float("inf"))
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def _onnx_bytes(served: Served, example: torch.Tensor, metadata: Mapping[str, Any]) -> bytes:
    names = list(served.outputs)
    program = torch.onnx.export(
        served, (example,), dynamo=True, input_names=[INPUT], output_names=names,
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    assert program is not None  # the dynamo exporter returns the ONNXProgram
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    data: bytes = proto.SerializeToString()
    return data


def _torchscript_bytes(served: Served, example: torch.Tensor,
                       metadata: Mapping[str, Any]) -> bytes:
    traced = torch.jit.trace(served, example, check_trace=False)  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={METADATA: json.dumps(dict(metadata))})
    return buffer.getvalue()


def _run_onnx(data: bytes, images: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(out) for out in session.run(None, {INPUT: images.numpy()})]


def _run_torchscript(data: bytes, images: torch.Tensor) -> list[torch.Tensor]:
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        out = module(images)
    return [out] if isinstance(out, torch.Tensor) else list(out)
