"""The model card `imgxfer export` writes beside an exported model: Markdown in the spirit
of Hugging Face model cards (a YAML header, then the model, its data, its metrics, what
goes in and comes out, how to run it, its intended use and the limitations the run
knows). The tasks fill a :class:`Card` (:mod:`imgxfer.tasks.classify.export`,
:mod:`imgxfer.tasks.dense.export`); this module only lays it out, and
:func:`imgxfer.run.export.export` adds how the file was checked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgxfer.run.export import INPUT, InputSpec
from imgxfer.run.markdown import table


@dataclass
class Output:
    """One output of the exported model: its name, shape and what it holds."""

    name: str
    shape: str
    meaning: str


@dataclass
class Card:
    title: str
    summary: str
    header: dict[str, Any]  # the YAML front matter: pipeline_tag, tags, datasets, metrics
    data: list[tuple[str, str]]  # rows of the data table
    metrics: list[str]  # Markdown blocks (tables, lines)
    inputs: InputSpec
    reading: list[str]  # how to bring an image to the input (bullets)
    outputs: list[Output]
    usage: str  # Markdown: how to run the file
    intended_use: list[str]
    limitations: list[str]
    extra: list[str] = field(default_factory=list)  # more sections, Markdown

    def render(self) -> str:
        parts = [_front_matter(self.header), f"# {self.title}", self.summary,
                 "## Data", table(["", ""], self.data), "## Metrics", *self.metrics,
                 "## Input", *_input_lines(self.inputs, self.reading),
                 "## Output", table(["name", "shape", "meaning"],
                                    [(f"`{o.name}`", o.shape, o.meaning)
                                     for o in self.outputs]),
                 *self.extra, "## How to use", self.usage,
                 "## Intended use", bullets(self.intended_use),
                 "## Limitations", bullets(self.limitations)]
        return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


def _front_matter(header: dict[str, Any]) -> str:
    # JSON values are valid YAML flow values: no YAML writer needed.
    lines = [f"{key}: {json.dumps(value)}" for key, value in header.items()]
    return "\n".join(["---", *lines, "---"])


def _input_lines(spec: InputSpec, reading: list[str]) -> list[str]:
    h, w = spec.size
    colour = ("1 channel (greyscale)" if spec.channels == 1
              else f"{spec.channels} channels, RGB order")
    values = ("uint8, 0 (black) to 255 (white)" if spec.dtype == "uint8"
              else "float32, 0.0 (black) to 1.0 (white)")
    return [bullets([f"name `{INPUT}`, shape (N, {spec.channels}, {h}, {w}): a batch of any "
                     "size N, layout NCHW (channels first)",
                     f"{colour}; {values}",
                     "the run's normalisation is inside the model: give plain pixel values",
                     *reading])]


def bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def metric(value: float | None, interval: Sequence[float] | None = None) -> str:
    """A metric to 4 decimals with its 95% interval, or "n/a"."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


def usage(fmt_name: str, path: Path, spec: InputSpec, outputs: Sequence[str],
          after: str = "") -> str:
    """The few lines that run the file: onnxruntime for ONNX, torch.jit for TorchScript;
    ``after`` is Python that continues from ``outputs`` (the outputs' names)."""
    dims = f"4, {spec.channels}, {spec.size[0]}, {spec.size[1]}"
    make = (f"np.random.randint(0, 256, ({dims}), dtype=np.uint8)" if spec.dtype == "uint8"
            else f"np.random.rand({dims}).astype(np.float32)")
    names = ", ".join(outputs) + ("," if len(outputs) == 1 else "")
    if fmt_name == "onnx":
        code = ["import numpy as np", "import onnxruntime as ort", "",
                f'session = ort.InferenceSession("{path.name}")',
                f"images = {make}  # your images, as described under Input",
                f'{names} = session.run(None, {{"{INPUT}": images}})']
    else:
        code = ["import numpy as np", "import torch", "",
                f'model = torch.jit.load("{path.name}")',
                f"images = torch.from_numpy({make})  # your images, as described under Input",
                "with torch.no_grad():",
                f"    {names} = model(images)" if len(outputs) > 1
                else f"    {outputs[0]} = model(images)"]
    return "```python\n" + "\n".join(code) + ("\n" + after if after else "") + "\n```"
