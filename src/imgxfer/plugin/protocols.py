"""The protocol of each component kind: every member the core uses, documented once.

A plugin's factory returns a plain object (or ``nn.Module``) that has these members; it
does not have to inherit anything. Inheriting the Protocol class is allowed and gives
the optional members their defaults. :mod:`imgxfer.plugin.testing` checks a component against
its protocol, and the core checks the required members right after building one
(:func:`check_component`), so a broken plugin is named in one sentence.

Optional abilities are *declared* with class attributes (``resumable = True``,
``trains_by_steps = False``), never discovered from signatures; :func:`declared` reads
them with the defaults listed here.

What every ``fit`` receives:

- ``budget`` (:class:`imgxfer.core.budget.Budget`): ``budget.steps`` (an ``int``; for a
  generator also ``None``, a time-only budget) and ``budget.seconds`` (a float or
  ``None``); stop when ``budget.done(step)`` is true. The core starts the clock.
- ``progress`` (:class:`imgxfer.core.progress.Progress`): ``with progress.task(text,
  total=budget.steps) as task: task.advance(1, loss=...)`` and ``progress.log(text)``.
- ``device`` (``torch.device``): where to train. The core moves an encoder to the device
  before ``pretrain`` and an adapter's encoder before ``fit``; anything a component builds
  itself, it moves itself.

Randomness: a factory that has a ``seed`` keyword gets the run's seed unless the user
gave one; draw every random number from generators seeded by it, so the same seed gives
the same result on the CPU.
"""

from __future__ import annotations

import functools
import numbers
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import GeneratorData, ImageDataset, TransferData
from imgxfer.nn.classifier import Classifier

__all__ = ["Encoder", "Captioner", "Generator", "Adapter", "FitResult", "Budget",
           "Progress", "Classifier", "check_component", "declared", "encoder_input_size",
           "OPTIONAL", "REQUIRED"]


@dataclass
class FitResult:
    """What a generator's ``fit`` returns: the steps it trained in all (those before a
    resume included) and its loss curves (name -> one value per step), plotted in the
    report. A generator that does not train returns ``FitResult(0)``."""

    steps: int
    losses: dict[str, list[float]] = field(default_factory=dict)


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module`` mapping preprocessed images ``[B, C, H, W]`` to features ``[B, D]``.

    Required: ``forward``, ``feature_dim`` (D), ``input_size`` (a pair (H, W), or an int
    for a square; the core reads it through :func:`encoder_input_size`), ``in_channels``,
    ``weights_source`` (a short text: "random", "imagenet", a path) and
    ``preprocess(images) -> tensor`` mapping float images in [0, 1] of any channel count
    and size to what ``forward`` expects, ``[B, in_channels, H, W]`` at ``input_size``
    (on the images' device).

    Channels follow the data when the factory asks: a factory whose ``in_channels``
    keyword defaults to 0 gets the run's image channels (3 when the source or the target
    is colour, else 1) unless the user set it, and the run's config.toml records the
    value, so ``imgxfer predict`` rebuilds the same encoder. A factory without that
    keyword, or with another default, keeps its own channels and ``preprocess`` maps the
    images to them (colour to grey or grey to colour).

    Optional: ``pretrain(source: ImageDataset, *, budget, progress, device) -> dict`` trains
    on labelled source images; the dict (JSON numbers, e.g. ``{"val_accuracy": 0.98}``) is
    merged into metrics.json's ``encoder`` section. Declare it with ``pretrains = True``.
    """

    feature_dim: int
    input_size: tuple[int, int] | int
    in_channels: int
    weights_source: str
    pretrains: ClassVar[bool] = False

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Captioner(Protocol):
    """Image -> text. ``images`` is ``[N, C, H, W]`` in [0, 1], or ``None`` when only
    labels are given (the captions then serve as prompts). ``labels`` may be ``None``
    (unlabelled images); the captioner may then call ``classifier(images) ->
    probabilities [N, classes]`` to describe its guess. ``description`` is the dataset's
    words for its images ("handwritten digit"). One caption per image (or label),
    deterministic for the same input, and each image's caption depends on that image
    alone: a run captions large datasets a chunk at a time.

    Optional: ``attributes(images) -> list[dict[str, float]]``, the measured values a
    caption was written from, one dict per image (``imgxfer caption`` writes them to
    captions.jsonl beside the text); ``to(device)``, for a captioner that computes with a
    model: a run calls it with the run's device before captioning (images still arrive
    on the CPU)."""

    def caption(self, images: torch.Tensor | None, labels: torch.Tensor | None = None, *,
                class_names: Sequence[str], domain: str, description: str = "",
                classifier: Any = None) -> list[str]: ...


@runtime_checkable
class Generator(Protocol):
    """Learns labelled, captioned images and draws new labelled images.

    Required:

    - ``conditioning``: the subset of {"label", "text"} that ``sample`` follows (the
      report and ``imgxfer generate`` say which).
    - ``fit(data: GeneratorData, *, budget, progress, device) -> FitResult``.
    - ``sample(prompts, labels, *, seed, device) -> tensor [N, C, H, W]`` in [0, 1] on the
      CPU, one image per prompt; ``labels`` are class indices; the same ``seed`` gives the
      same images; compute on ``device``.
    - ``state_dict() -> dict[str, Tensor]`` and ``load_state_dict(state)``: what
      ``generator.safetensors`` holds (tensors only). A generator rebuilt entirely from its
      options (a pretrained pipeline read from a folder) may return ``{}``.

    For distributed runs (``torchrun``/``accelerate launch``, :mod:`imgxfer.core.distributed`),
    a ``fit`` that trains steps with ``imgxfer.core.distributed.backward_step(loss,
    optimizer)`` (instead of ``loss.backward(); optimizer.step()``) and adds
    ``imgxfer.core.distributed.seed_offset()`` to the seed of its batch draws trains
    data-parallel; ``imgxfer.nn.generator_training.train_steps`` also applies
    ``--mixed-precision`` and agrees on time budgets. Both are no-ops in one process.

    Optional (declared):

    - ``trains_by_steps = False``: usable without training (``--generator-steps 0`` is
      accepted).
    - ``resumable = True``: ``fit`` also takes ``checkpoint: Path`` and ``resume: bool``,
      saves its whole training state there atomically while it trains and, with
      ``resume``, continues from it (``imgxfer run --resume``).
    - ``resolved_options() -> dict`` (a method): every option with its value, defaults included, so
      ``imgxfer generate`` rebuilds the same generator if defaults change later (the
      run's options are recorded when it is absent).
    - ``options_from_state(state) -> dict``, a static method of the *factory* (when the
      factory is the class): architecture options read back from a saved state, which win
      over defaults when ``imgxfer generate`` rebuilds it.
    - A training checkpoint of a resumable generator records safetensors metadata
      ``format = "<name>.training"``, so ``imgxfer generate`` refuses it by name.
    - ``num_classes``: the classes a trained or loaded generator draws (``None`` if
      unknown), checked against the run's class list when loading.
    - ``synthesis``: the subset of :data:`imgxfer.core.config.SYNTHESIS_MODES` it can do
      (default ``{"text"}``). ``fit`` reads the mode the run asks for in
      ``data.synthesis``. ``"shots"`` or ``"translate"`` promise
      ``edit(images, labels, prompts, *, seed, device) -> tensor [N, C, H, W]``: one
      image per input image ([N, C, H, W] in [0, 1], of any size and channel count),
      turned into the target domain while keeping what its label ``labels[i]`` names,
      following ``prompts[i]``; in [0, 1], on the CPU; the same ``seed`` gives the same
      images. ``shots`` passes the labelled target images, ``translate`` labelled source
      images (``fit`` then had target-domain images in ``data.unlabelled``).
    """

    conditioning: frozenset[str] | set[str]
    trains_by_steps: ClassVar[bool] = True
    resumable: ClassVar[bool] = False

    def fit(self, data: GeneratorData, *, budget: Budget, progress: Progress,
            device: torch.device) -> FitResult: ...

    def sample(self, prompts: Sequence[str], labels: Sequence[int] | torch.Tensor, *,
               seed: int, device: torch.device) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Any: ...


@runtime_checkable
class Adapter(Protocol):
    """A transfer method.

    Required: ``uses`` (the subset of {"source", "target_labelled", "target_unlabelled",
    "synthetic"} it trains on; ``--compare-synthetic`` fits it once when it does not use
    "synthetic") and ``fit(encoder, data: TransferData, *, budget, progress, device) ->
    Classifier``. ``encoder`` is the run's (source-trained) encoder, already a copy and on
    ``device``: train it in place if the method does. The result must be an
    :class:`imgxfer.nn.classifier.Classifier` (the encoder and a linear head over its
    features) mapping preprocessed images to logits: that is what ``classifier.safetensors``
    holds and ``imgxfer predict`` rebuilds. A method with another head (a nearest class
    mean, a prototype) writes it as that linear layer.

    Optional (declared): ``trains_by_steps = False`` (ignores ``budget.steps``, e.g. a
    probe solved to convergence; ``--adapter-steps 0`` is accepted) and ``history`` (one
    loss per step, plotted in the report). ``scores_images = True`` promises
    ``score_images(images, labels, *, class_names, description, device) -> tensor [N]``:
    without fitting anything (a zero-shot classifier), the probability in [0, 1] that each
    image (``[N, C, H, W]`` in [0, 1], on the CPU) shows the class ``labels[i]``; such an
    adapter can judge synthetic images (``--synthetic-filter-by NAME``). A method that
    works only with a particular encoder has ``check_encoder(encoder)``, raising a
    :class:`UserError` for any other: the run calls it when it is prepared, before any
    folder exists or anything is trained.
    """

    uses: frozenset[str] | set[str]
    trains_by_steps: ClassVar[bool] = True

    def fit(self, encoder: Any, data: TransferData, *, budget: Budget, progress: Progress,
            device: torch.device) -> Classifier: ...


# A dataset factory returns an :class:`imgxfer.data.dataset.ImageDataset` (images [N, C, H, W]
# float in [0, 1], int labels indexing ``class_names``, the ``domain`` name, optional
# ``description``, ``notes``, ``paths`` and ``layout``); it needs no protocol of its own.
# A scene dataset's factory (``--task segment``/``detect``) returns an
# :class:`imgxfer.data.scenes.SceneDataset` instead.
Dataset = ImageDataset

# The members the core calls, per kind (what check_component looks for).
REQUIRED: dict[str, tuple[str, ...]] = {
    "encoders": ("forward", "feature_dim", "input_size", "in_channels", "weights_source",
                 "preprocess", "to", "state_dict", "load_state_dict"),
    "captioners": ("caption",),
    "generators": ("conditioning", "fit", "sample", "state_dict", "load_state_dict"),
    "adapters": ("uses", "fit"),
}
# Declared abilities and their defaults when a component does not declare them.
OPTIONAL: dict[str, dict[str, Any]] = {
    "encoders": {"pretrains": False},
    "captioners": {"attributes": None, "to": None},
    "generators": {"trains_by_steps": True, "resumable": False, "num_classes": None,
                   "resolved_options": None, "synthesis": frozenset({"text"})},
    "adapters": {"trains_by_steps": True, "history": (), "scores_images": False,
                 "check_encoder": None},
}
# A declared ability and the method it promises (a resumable generator's fit taking
# checkpoint= and resume= is exercised by imgxfer.plugin.testing.check_generator).
IMPLIES: dict[str, dict[str, str]] = {"encoders": {"pretrains": "pretrain"},
                                      "adapters": {"scores_images": "score_images"}}
KIND_OF = {"encoders": "encoder", "captioners": "captioner", "generators": "generator",
           "adapters": "adapter", "datasets": "dataset"}


def declared(component: Any, ability: str, kind: str) -> Any:
    """The value a component declares for an optional member, or its documented default."""
    return getattr(component, ability, OPTIONAL[kind][ability])


def _positive_int(value: Any) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) > 0)


def encoder_input_size(encoder: Any, what: str = "the encoder") -> tuple[int, int]:
    """``encoder.input_size`` as (H, W): an int is a square size. Every place the core
    reads an encoder's input size goes through here, so a plugin may declare either form;
    any other is one sentence naming ``what`` and the forms accepted."""
    size = encoder.input_size
    if _positive_int(size):
        return int(size), int(size)
    if (isinstance(size, (tuple, list)) and len(size) == 2
            and all(_positive_int(s) for s in size)):
        return int(size[0]), int(size[1])
    raise UserError(f"{what} has input_size {size!r}; it must be a positive int (a square "
                    "size such as 32) or a pair (height, width) of positive ints (see "
                    "imgxfer.plugin.protocols.Encoder).")


def check_component(kind: str, component: Any, name: str, plugin: str) -> Any:
    """Return ``component`` if it has every member its protocol requires; otherwise a
    :class:`UserError` naming the plugin, the component and what is missing."""
    what = f"{KIND_OF[kind]} {name!r} of plugin {plugin!r}"
    if kind == "datasets":
        from imgxfer.data.scenes import SceneDataset  # the dense tasks' datasets

        if not isinstance(component, (ImageDataset, SceneDataset)):
            raise UserError(f"{what} returned a {type(component).__name__}, not an "
                            "imgxfer.data.dataset.ImageDataset or imgxfer.data.scenes.SceneDataset (see "
                            "imgxfer.plugin.protocols).")
        return component
    if isinstance(component, (type, types.FunctionType, types.MethodType, functools.partial)):
        raise UserError(f"{what}: its factory returned {component!r}, not a component "
                        "(see imgxfer.plugin.protocols).")
    if kind == "encoders" and not isinstance(component, torch.nn.Module):
        raise UserError(f"{what} is a {type(component).__name__}, not a torch.nn.Module "
                        "(see imgxfer.plugin.protocols.Encoder).")
    missing = [m for m in REQUIRED[kind] if not hasattr(component, m)]
    missing += [method for ability, method in IMPLIES.get(kind, {}).items()
                if declared(component, ability, kind) and not hasattr(component, method)]
    if (kind == "generators" and set(declared(component, "synthesis", kind)) - {"text"}
            and not hasattr(component, "edit")):
        missing.append("edit (its synthesis declares image-to-image modes)")
    if missing:
        raise UserError(f"{what} breaks the {KIND_OF[kind]} protocol: it has no "
                        f"{', '.join(missing)} (see imgxfer.plugin.protocols.{KIND_OF[kind].title()}).")
    if kind == "encoders":
        encoder_input_size(component, what)  # refused here, not deep inside a run
    return component


def checkpoint_args(generator: Any, checkpoint: Path, resume: bool) -> dict[str, Any]:
    """The keyword arguments of ``fit`` for a generator that declares ``resumable``."""
    return {"checkpoint": checkpoint, "resume": resume} if declared(
        generator, "resumable", "generators") else {}
