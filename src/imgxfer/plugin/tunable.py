"""Which options `imgxfer tune` may search, and over what ranges (docs/architecture.md,
"Tuning").

A component declares its tunable options with a ``tunable`` mapping on its *factory*: a
class attribute when the factory is the class, an attribute of the function otherwise.
Each key is one of the factory's options; each value says how to sample it::

    class MyAdapter:
        tunable = {
            "lr": ("log", 1e-4, 1e-2),          # a float, sampled on a log scale
            "momentum": ("float", 0.5, 0.99),   # a float, uniform
            "hidden": ("int", 64, 512),         # an integer, uniform
            "heads": ("int-log", 1, 16),        # an integer, on a log scale
            "loss": ("choice", "ce", "focal"),  # one of these values (str, int, float, bool)
        }

The declaration is plain data, so declaring costs a plugin no import of Optuna; this
module checks it (``imgxfer.plugin.testing`` checks it as part of each component's contract) and
:mod:`imgxfer.sweep.tune` turns it into Optuna distributions. Options left out are never
searched (architecture sizes, seeds, switches that change what a component is).

Besides component options, a run has its own knobs (:func:`run_knobs`): the adapter's
step count, and the synthetic images per class when a generator runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, cast

from imgxfer.core.config import AUTO, NONE, RunConfig
from imgxfer.core.errors import UserError
from imgxfer.plugin.protocols import declared
from imgxfer.plugin.registry import Component, Registry

SCALES = ("float", "log", "int", "int-log", "choice")
# The component kinds whose options `imgxfer tune` searches, by the config table that
# holds their options (the tuned name is "<stage>.<option>", e.g. "adapter.lr").
STAGE_KINDS = {"adapter": "adapters", "generator": "generators"}


@dataclass(frozen=True)
class Range:
    """One tunable option's range: ``scale`` is one of :data:`SCALES`; ``values`` holds
    (low, high) for the numeric scales and the choices for ``choice``."""

    scale: str
    values: tuple[Any, ...]

    @property
    def log(self) -> bool:
        return self.scale in ("log", "int-log")

    def contains(self, value: Any) -> bool:
        if self.scale == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return cast(bool, self.values[0] <= value <= self.values[1])

    def shown(self) -> str:
        if self.scale == "choice":
            return "one of " + ", ".join(map(repr, self.values))
        return f"{self.values[0]:g} to {self.values[1]:g}" + (" (log)" if self.log else "")


def parse_range(spec: Any) -> Range:
    """A declared range as a :class:`Range`; a malformed one is a ``ValueError`` saying
    what is wrong (the caller names the component)."""
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in SCALES:
        raise ValueError(f"{spec!r} is not (scale, ...) with a scale from {', '.join(SCALES)}")
    scale, values = spec[0], tuple(spec[1:])
    if scale == "choice":
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"{spec!r} needs one or more str, int, float or bool choices")
        return Range(scale, values)
    if len(values) != 2:
        raise ValueError(f"{spec!r} needs exactly a low and a high value")
    low, high = values
    whole = scale.startswith("int")
    numbers = all(isinstance(v, int if whole else (int, float)) and not isinstance(v, bool)
                  for v in values)
    if not numbers or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{spec!r} needs finite {'integer' if whole else 'number'} bounds")
    if not low < high:
        raise ValueError(f"{spec!r} needs low < high")
    if scale in ("log", "int-log") and low <= 0:
        raise ValueError(f"{spec!r} is on a log scale, so its low value must be above 0")
    return Range(scale, (float(low), float(high)) if not whole else (low, high))


def declared_ranges(component: Component) -> dict[str, Range]:
    """The ranges a component's factory declares (``{}`` when it declares none); a
    malformed declaration is one sentence naming the plugin (a plugin bug)."""
    spec = getattr(component.factory, "tunable", None) or {}
    what = f"{component.kind[:-1]} {component.name!r} of plugin {component.plugin!r}"
    if not isinstance(spec, dict):
        raise UserError(f"{what} declares tunable as a {type(spec).__name__}, not a mapping "
                        "of option names to ranges (see imgxfer.plugin.tunable).")
    options = set(component.options())
    ranges = {}
    for name, value in spec.items():
        if name not in options:
            raise UserError(f"{what} declares {name!r} tunable, but it is not one of its "
                            f"options ({', '.join(sorted(options)) or 'none'}).")
        try:
            ranges[name] = parse_range(value)
        except ValueError as error:
            raise UserError(f"{what} declares a bad range for {name!r}: {error} (see "
                            "imgxfer.plugin.tunable).") from None
    return ranges


def run_knobs(config: RunConfig, registry: Registry) -> dict[str, Range]:
    """The run-level options tune may search, around the config's own values: the
    adapter's steps (when it trains by steps) and, when a generator runs, the synthetic
    images per class."""
    knobs = {}
    adapter = registry.get("adapters", config.adapter)
    if declared(adapter.factory, "trains_by_steps", "adapters") and config.adapter_steps:
        steps = config.adapter_steps
        knobs["adapter_steps"] = Range("int-log", (max(1, steps // 2), max(2, steps * 2)))
    if config.generator != NONE and config.synthetic_per_class:
        n = config.synthetic_per_class
        knobs["synthetic_per_class"] = Range("int-log", (max(1, n // 4), max(2, n * 2)))
    return knobs


def available(config: RunConfig, registry: Registry) -> dict[str, Range]:
    """Everything tune may search for this config, by tuned name."""
    space = dict(run_knobs(config, registry))
    for stage, kind in STAGE_KINDS.items():
        name = getattr(config, stage)
        if name == NONE:
            continue
        for option, rng in declared_ranges(registry.get(kind, name)).items():
            space[f"{stage}.{option}"] = rng
    if config.generator == NONE:
        # The weight of synthetic images changes nothing in a run that makes none; left
        # in, it would only add a dimension of noise to the search.
        space.pop("adapter.synthetic_weight", None)
    return space


def search_space(config: RunConfig, registry: Registry, asked: list[str] | None = None
                 ) -> dict[str, Range]:
    """What to search: every tunable option of the run, or the ``asked`` ones (``--param``),
    each of which must be tunable here; one sentence otherwise."""
    space = available(config, registry)
    if not space:
        raise UserError(f"nothing to tune: adapter {config.adapter!r}"
                        + (f" and generator {config.generator!r}" if config.generator != NONE
                           else "") + " declare no tunable options, and the run has no "
                        "tunable steps (see imgxfer.plugin.tunable).")
    if not asked:
        return space
    unknown = [name for name in dict.fromkeys(asked) if name not in space]
    if unknown:
        raise UserError(f"--param {', '.join(unknown)}: not tunable in this run; tunable "
                        f"here: {', '.join(space)}.")
    return {name: space[name] for name in dict.fromkeys(asked)}


def with_run_policy(space: dict[str, Range], policy: str) -> dict[str, Range]:
    """``space`` with the run's own augmentation policy among ``adapter.augment``'s
    choices, so that the study starts from what the run does. ``style``, the policy
    ``--augment auto`` chooses for a grey source and a colour target, is not among the
    shared choices: a study made before it existed must keep its choices to continue."""
    rng = space.get("adapter.augment")
    if rng is None or policy in ("", AUTO) or rng.scale != "choice" or policy in rng.values:
        return space
    return {**space, "adapter.augment": Range("choice", (*rng.values, policy))}


def current_values(config: RunConfig, registry: Registry, names: list[str]) -> dict[str, Any]:
    """The value each tuned name has in ``config`` (its component's default where the
    config does not set it): the starting point a study is compared to."""
    values = {}
    for name in names:
        stage, _, option = name.rpartition(".")
        if not stage:
            values[name] = getattr(config, name)
            continue
        component = registry.get(STAGE_KINDS[stage], getattr(config, stage))
        if option in config.options[stage]:
            values[name] = config.options[stage][option]
        elif option == "augment" and config.augment not in ("", AUTO):
            values[name] = config.augment  # the run's policy reaches the factory (Registry.build)
        elif option in component.defaults():
            values[name] = component.defaults()[option]
    return values


def with_params(config: RunConfig, params: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with tuned values set: ``adapter.lr`` in the [adapter] table,
    ``adapter_steps`` at the top level."""
    config = copy.deepcopy(config)
    for name, value in params.items():
        stage, _, option = name.rpartition(".")
        if stage:
            config.options[stage][option] = value
        else:
            setattr(config, name, value)
    return config
