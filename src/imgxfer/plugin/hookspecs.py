"""Hook specifications: the one way a plugin adds components or commands to imgxfer.

A plugin is a module (or object) with functions decorated by ``imgxfer.hookimpl`` whose
names match the specs below. Built-in components are registered through these same hooks
by :mod:`imgxfer.components.builtin`.

Every ``register_*`` hook receives a ``register`` callable owned by the host::

    register(name: str, factory: Callable[..., Component], *, description: str = "")

- ``name`` is what users type (``--encoder NAME``). A name ending in ``/`` or ``:`` is a
  *family*: ``register("timm/", make)`` answers every ``timm/<anything>`` and the part
  after the prefix is passed to the factory as its first positional argument.
- ``factory`` is called with keyword options (from ``--encoder-opt key=value`` or the
  component's TOML table) and returns the component; unknown options are refused before
  it is called, by inspecting its signature. A ``seed`` keyword receives the run's seed.
  What the component must provide is in :mod:`imgxfer.plugin.protocols`; a component that lacks
  a required member is refused when built, in one sentence naming the plugin.
- ``description`` is one line shown by ``imgxfer list``; the factory's docstring is used
  when it is empty.

Registering a name that another plugin already registered raises an error naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "imgxfer"
# Plugins are found through entry points of this group (pyproject: [project.entry-points.imgxfer]).
ENTRY_POINT_GROUP = "imgxfer"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register image encoders: the factory returns an ``nn.Module`` with the members of
    :class:`imgxfer.plugin.protocols.Encoder` (``forward``, ``feature_dim``, ``input_size``,
    ``in_channels``, ``weights_source``, ``preprocess``; ``pretrain`` when it declares
    ``pretrains = True``). Check one with :func:`imgxfer.plugin.testing.check_encoder`."""


@hookspec
def register_captioners(register: Register) -> None:
    """Register captioners (image -> text): the factory returns an object with the
    ``caption`` method of :class:`imgxfer.plugin.protocols.Captioner`. Check one with
    :func:`imgxfer.plugin.testing.check_captioner`."""


@hookspec
def register_generators(register: Register) -> None:
    """Register generators (captions/prompts -> synthetic labelled images): the factory
    returns an object with the members of :class:`imgxfer.plugin.protocols.Generator`
    (``conditioning``, ``fit(data, *, budget, progress, device) -> FitResult``,
    ``sample(prompts, labels, *, seed, device)``, ``state_dict``/``load_state_dict``) and
    declares its optional abilities there (``trains_by_steps``, ``resumable``). Check one
    with :func:`imgxfer.plugin.testing.check_generator`."""


@hookspec
def register_adapters(register: Register) -> None:
    """Register transfer methods (adapters): the factory returns an object with the
    members of :class:`imgxfer.plugin.protocols.Adapter` (``uses`` and ``fit(encoder, data, *,
    budget, progress, device) -> Classifier``; ``trains_by_steps = False`` for a method
    that ignores the step count). Check one with :func:`imgxfer.plugin.testing.check_adapter`."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets (check one with :func:`imgxfer.plugin.testing.check_dataset`).

    The factory returns an :class:`imgxfer.data.dataset.ImageDataset` (images as a float tensor
    in [0, 1], integer labels, class names and the domain name; ``layout="glyph"`` when
    the images are in the MNIST layout of :mod:`imgxfer.data.layout`, so `imgxfer
    predict` puts new files of a run on it in that layout too). Family names such as
    ``folder:`` receive the rest of the name (a path) as first positional argument.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``imgxfer`` command line.

    ``cli`` is the root ``click.Group``; call ``cli.add_command(command)``.
    """
