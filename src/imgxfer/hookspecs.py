"""Hook specifications: the one way a plugin adds components or commands to imgxfer.

A plugin is a module (or object) with functions decorated by ``imgxfer.hookimpl`` whose
names match the specs below. Built-in components are registered through these same hooks
by :mod:`imgxfer.builtin`.

Every ``register_*`` hook receives a ``register`` callable owned by the host::

    register(name: str, factory: Callable[..., Component], *, description: str = "")

- ``name`` is what users type (``--encoder NAME``). A name ending in ``/`` or ``:`` is a
  *family*: ``register("timm/", make)`` answers every ``timm/<anything>`` and the part
  after the prefix is passed to the factory as its first positional argument.
- ``factory`` is called with keyword options (from ``--encoder-opt key=value`` or the
  component's TOML table) and returns the component; unknown options are refused before
  it is called, by inspecting its signature.
- ``description`` is one line shown by ``imgxfer list``; the factory's docstring is used
  when it is empty.

Registering a name that another plugin already registered raises an error naming both.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "imgxfer"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register image encoders.

    The factory returns an ``torch.nn.Module`` whose ``forward(x[B,C,H,W]) -> [B,D]`` and
    which has the attributes ``feature_dim`` (D), ``input_size`` ((H, W)),
    ``in_channels``, ``weights_source`` (a short text: "random", "imagenet", a path...) and
    the method ``preprocess(images) -> tensor`` mapping float images in [0, 1] of any
    channel count and size to what ``forward`` expects. An optional
    ``pretrain(source, *, budget, progress, device)`` trains it on labelled source data.
    """


@hookspec
def register_captioners(register: Register) -> None:
    """Register captioners (image -> text).

    The factory returns an object with ``caption(images, labels=None, *, class_names,
    domain, description="", classifier=None) -> list[str]``. ``images`` is a float tensor
    [N,C,H,W] in [0, 1], or ``None`` when only labels are given (the captions then serve
    as prompts for the generator). ``labels`` may be ``None`` (unlabelled images); a
    captioner may then call ``classifier(images) -> probabilities [N, classes]`` to
    describe its prediction. ``description`` is the dataset's words for its images
    ("handwritten digit").
    """


@hookspec
def register_generators(register: Register) -> None:
    """Register generators (captions/prompts -> synthetic images).

    The factory returns an object with ``conditioning`` (a set drawn from
    {"label", "text"}), ``fit(data, *, budget, progress, device)`` where ``data`` is a
    :class:`imgxfer.data.GeneratorData`, ``sample(prompts, labels, n=None) ->
    tensor[N,C,H,W]`` in [0, 1], and ``state_dict()`` / ``load_state_dict(state)``
    holding tensors only (they are saved as safetensors). A generator that is usable
    without training (e.g. a pretrained diffusion model) sets ``trains_by_steps = False``,
    so ``--generator-steps 0`` is accepted for it.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Register transfer methods (adapters).

    The factory returns an object with ``uses`` (a set drawn from {"source",
    "target_labelled", "target_unlabelled", "synthetic"}: what it trains on) and
    ``fit(encoder, data, *, budget, progress, device) -> classifier`` where ``data`` is a
    :class:`imgxfer.data.TransferData` and ``classifier`` an ``nn.Module`` mapping images
    (already preprocessed for the encoder) to class logits. An adapter that ignores the
    step budget (e.g. a probe solved to convergence) sets ``trains_by_steps = False``, so
    ``--adapter-steps 0`` is accepted for it.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets.

    The factory returns an :class:`imgxfer.data.ImageDataset` (images as a float tensor
    in [0, 1], integer labels, class names and the domain name; ``layout="glyph"`` when
    the images are in the MNIST layout of :mod:`imgxfer.datasets.layout`, so `imgxfer
    predict` puts new files of a run on it in that layout too). Family names such as
    ``folder:`` receive the rest of the name (a path) as first positional argument.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``imgxfer`` command line.

    ``cli`` is the root ``click.Group``; call ``cli.add_command(command)``.
    """
