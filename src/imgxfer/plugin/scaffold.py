"""`imgxfer plugin new`: write the skeleton of a plugin package, ready to install and test.

:func:`new_plugin` writes ``OUT/imgxfer-NAME/`` with a ``pyproject.toml`` whose entry point
``NAME = "imgxfer_NAME"`` (group ``imgxfer``) makes imgxfer load it, a module per component
kind holding a small working component written to :mod:`imgxfer.plugin.protocols`, the hooks that
register it under NAME, a README and tests that run the contract kit
(:mod:`imgxfer.plugin.testing`) and check that the entry point loads. The templates are the
strings in :data:`TEMPLATES`; ``$name``, ``$module``, ``$dist`` and ``$kinds`` are filled in
with :class:`string.Template`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from imgxfer.core.config import AUTO, FILTER_PROBE, NONE
from imgxfer.core.errors import UserError
from imgxfer.plugin.registry import KINDS as PLURAL_KINDS
from imgxfer.plugin.registry import SINGULAR

KINDS = tuple(SINGULAR[kind] for kind in PLURAL_KINDS)  # "encoder", ... as `--kind` takes them
# The class or function each kind's module defines (what the hook registers).
FACTORY = {"encoder": "TinyConvEncoder", "generator": "MeanImageGenerator",
           "adapter": "NearestClassMean", "captioner": "LabelCaptioner",
           "dataset": "make_dataset"}
# How a user reaches the component from `imgxfer run`.
RUN_FLAG = {"encoder": "--encoder", "generator": "--generator", "adapter": "--adapter",
            "captioner": "--captioner"}
RESERVED = {"builtin", "imgxfer"}
# Words the CLI reads as something other than a component name: a component called so
# could never be chosen (--generator none means no generator, auto lets imgxfer choose,
# --synthetic-filter-by probe is the built-in scorer).
COMPONENT_WORDS = {NONE: "means 'no component' (e.g. --generator none)",
                   AUTO: "means 'let imgxfer choose' (e.g. --synthesis auto, --device auto)",
                   FILTER_PROBE: "names the built-in scorer of --synthetic-filter-by"}
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_MAX_NAME = 40


@dataclass
class Skeleton:
    """What :func:`new_plugin` wrote."""

    name: str  # entry point and component name ("my-enc")
    module: str  # import name ("imgxfer_my_enc")
    dist: str  # distribution name ("imgxfer-my-enc")
    kinds: list[str]
    folder: Path
    files: list[Path] = field(default_factory=list)  # relative to folder


def normalise(name: str) -> str:
    """The plugin name users type: lower case, ``_`` and spaces read as ``-``, an
    ``imgxfer-`` prefix dropped; a :class:`UserError` when it is not a usable name."""
    given = name
    name = re.sub(r"[_\s]+", "-", name.strip().lower())
    name = name[len("imgxfer-"):] if name.startswith("imgxfer-") else name
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise UserError(f"plugin name {given!r} is not usable: give letters, digits and single "
                        f"dashes, starting with a letter and at most {_MAX_NAME} characters "
                        "(e.g. my-encoder).")
    if name in RESERVED:
        raise UserError(f"plugin name {given!r} is reserved by imgxfer; choose another name.")
    if name in COMPONENT_WORDS:
        raise UserError(f"plugin name {given!r} is reserved: on imgxfer's command line "
                        f"{name!r} {COMPONENT_WORDS[name]}, so a component of that name could "
                        "not be chosen; choose another name.")
    return name


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(kinds)) or ["encoder"]
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise UserError(f"unknown component kind {unknown[0]!r}; choose from {', '.join(KINDS)}.")
    return chosen


def check_name_free(name: str, kinds: list[str], *, registry: Any = None,
                    entry_points: dict[str, str] | None = None,
                    known: Iterable[str] = ()) -> None:
    """Refuse a name an installed plugin (``entry_points``: name -> distribution), a
    registry.toml entry (``known``) or, for the chosen kinds, an already registered
    component (``registry``) uses, since both would clash when the new plugin loads."""
    if entry_points and name in entry_points:
        raise UserError(f"plugin name {name!r} is taken by the installed distribution "
                        f"{entry_points[name]}; choose another name.")
    if name in set(known):
        raise UserError(f"plugin name {name!r} is taken by a plugin listed in registry.toml "
                        "(see `imgxfer plugins --available`); choose another name.")
    if registry is not None:
        for kind in kinds:
            table = registry.components[kind + "s"]
            if name in table:
                raise UserError(f"{kind} {name!r} is already registered by plugin "
                                f"{table[name].plugin!r}, and the new plugin registers its "
                                f"{kind} under its own name; choose another name.")


def new_plugin(name: str, kinds: Iterable[str] = ("encoder",), out: Path | str = ".",
               **check: Any) -> Skeleton:
    """Write the plugin skeleton ``out/imgxfer-NAME``; ``check`` goes to
    :func:`check_name_free`. The target folder must be missing or empty."""
    name = normalise(name)
    chosen = _check_kinds(kinds)
    check_name_free(name, chosen, **check)
    module, dist = "imgxfer_" + name.replace("-", "_"), "imgxfer-" + name
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder.")
    folder = out / dist
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"folder {str(folder)!r} already exists and is not empty; choose "
                        "another name or --out folder.")
    skeleton = Skeleton(name, module, dist, chosen, folder)
    values = {"name": name, "module": module, "dist": dist,
              "kinds": ", ".join(chosen), "title": name.replace("-", " ")}
    files = render(skeleton, values)
    try:
        for rel, text in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            skeleton.files.append(Path(rel))
    except OSError as exc:
        raise UserError(f"cannot write the plugin into {str(folder)!r}: "
                        f"{exc.strerror or exc}.") from None
    return skeleton


def render(skeleton: Skeleton, values: dict[str, str]) -> dict[str, str]:
    """Relative path -> text of every file of the skeleton."""
    kinds = skeleton.kinds

    def fill(text: str, **more: str) -> str:
        return Template(text).substitute(values, **more)

    imports = "\n".join(f"from {skeleton.module}.{k} import {FACTORY[k]}" for k in sorted(kinds))
    hooks = "\n\n\n".join(fill(HOOK[k]) for k in kinds)
    exported = "".join(f'    "{FACTORY[k]}",\n' for k in kinds)
    files = {
        "pyproject.toml": fill(PYPROJECT, description=_description(skeleton)),
        "README.md": fill(README, components=_readme_components(skeleton),
                          run_examples=_run_examples(skeleton),
                          option_example=OPTION_EXAMPLE[kinds[0]]),
        ".gitignore": GITIGNORE,
        f"src/{skeleton.module}/__init__.py": fill(INIT, imports=imports, hooks=hooks,
                                                   exported=exported),
        f"src/{skeleton.module}/py.typed": "",
    }
    for kind in kinds:
        files[f"src/{skeleton.module}/{kind}.py"] = fill(COMPONENT[kind])
    needed: dict[str, set[str]] = {}
    for line in [*BASE_TEST_IMPORTS, *(line for k in kinds for line in TEST_IMPORTS[k])]:
        module, names = line[len("from "):].split(" import ")
        needed.setdefault(module, set()).update(names.split(", "))
    test_imports = "\n".join(f"from {m} import {', '.join(sorted(n))}"
                              for m, n in sorted(needed.items()))
    files[f"tests/test_{skeleton.module[len('imgxfer_'):]}.py"] = fill(
        TESTS, test_imports=test_imports,
        component_imports=imports,
        expected="".join(f'\n        ("{k}s", "{skeleton.name}"),' for k in kinds),
        kind_tests="\n\n".join(fill(TEST[k]) for k in kinds))
    return files


def _description(s: Skeleton) -> str:
    kinds = s.kinds if len(s.kinds) == 1 else [", ".join(s.kinds[:-1]), s.kinds[-1]]
    return f"imgxfer plugin {s.name}: {' and '.join(kinds)}."


def _readme_components(s: Skeleton) -> str:
    return "\n".join(f"- {k} `{s.name}` ({FACTORY[k]} in `src/{s.module}/{k}.py`): "
                     f"{SUMMARY[k]}" for k in s.kinds)


def _run_examples(s: Skeleton) -> str:
    lines = []
    for k in s.kinds:
        if k == "dataset":
            lines.append(f"imgxfer caption {s.name} --shots 2   # captions.jsonl of its images")
        else:
            lines.append(f"imgxfer run {RUN_FLAG[k]} {s.name}")
    return "\n".join(lines)


def next_steps(skeleton: Skeleton, shown_folder: str) -> list[str]:
    """Commands to try the new plugin, for the CLI to print."""
    # [test] brings pytest into the environment imgxfer runs in (a `make run` venv has
    # none, and another environment's pytest has no torch); python -m runs that one.
    steps = [f"pip install -e '{shown_folder}[test]'",
             f"python -m pytest {shown_folder}/tests",
             "imgxfer list" + (f" {skeleton.kinds[0]}s" if len(skeleton.kinds) == 1 else "")]
    runs = [k for k in skeleton.kinds if k != "dataset"]
    if runs:
        steps.append("imgxfer run " + " ".join(f"{RUN_FLAG[k]} {skeleton.name}" for k in runs))
    if "dataset" in skeleton.kinds:
        steps.append(f"imgxfer caption {skeleton.name} --shots 2")
    return steps


OPTION_EXAMPLE = {"encoder": "--encoder-opt width=32",
                  "generator": "--generator-opt noise=0.3",
                  "adapter": "--adapter-opt use_synthetic=false",
                  "captioner": "--captioner-opt template='a {label}'",
                  "dataset": "--target-opt n_per_class=100"}
SUMMARY = {
    "encoder": "a tiny convolutional network (two strided convolutions, global average "
               "pooling) that imgxfer first trains on the labelled source images.",
    "generator": "draws a class's mean image plus Gaussian noise scaled by that class's "
                 "per-pixel spread (no training; `--generator-steps 0` is fine).",
    "adapter": "a nearest-class-mean classifier in the encoder's feature space, built from "
               "the labelled target shots (and synthetic images); no training.",
    "captioner": "captions from the class name, the dataset's description and its domain, "
                 "through a template option.",
    "dataset": "three kinds of stripe (horizontal, vertical, diagonal) drawn at random "
               "positions and widths, seeded.",
}

# -- templates ---------------------------------------------------------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$description"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["imgxfer>=0.1", "torch>=2.4"]

[project.optional-dependencies]
test = ["pytest>=7"]

# This entry point is what makes imgxfer load the plugin: name = module.
[project.entry-points.imgxfer]
$name = "$module"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
$module = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
.pytest_cache/
"""

README = '''\
# $dist

An imgxfer plugin that adds:

$components

## Install and test

```sh
pip install -e '.[test]'    # from this folder, in imgxfer's environment (its entry point)
python -m pytest            # the imgxfer contract kit and this plugin's own tests
imgxfer plugins             # shows plugin '$name' and what it registered
```

## Use

```sh
$run_examples
```

Options are the keyword arguments of each factory: `imgxfer list` shows them with their
defaults, and `--STAGE-opt key=value` sets them (e.g. `$option_example`).

## Where to go from here

- `src/$module/__init__.py` registers the components (one `@imgxfer.hookimpl` per kind);
  rename them there, or register more than one.
- Each component is written to its protocol in `imgxfer.plugin.protocols`; the tests call the
  contract kit (`imgxfer.plugin.testing.check_<kind>`), which checks every member imgxfer uses.
- Errors a user can cause (a bad option value) are `imgxfer.core.errors.UserError` with one
  sentence; imgxfer prints it without a traceback.
- Uninstall with `imgxfer uninstall $name`.
'''

INIT = '''\
"""$dist: an imgxfer plugin ($kinds).

imgxfer finds this module through its entry point in group ``imgxfer``, in
pyproject.toml::

    [project.entry-points.imgxfer]
    $name = "$module"

and calls its hooks. Each ``register(name, factory)`` adds one component under the name
users type; the factory's keyword arguments are its options (``--STAGE-opt key=value``)
and the first line of its docstring is what ``imgxfer list`` shows.
"""

from __future__ import annotations

import imgxfer
from imgxfer import Register

$imports

__version__ = "0.1.0"
__all__ = [
$exported    "__version__",
]


$hooks
'''

HOOK = {
    "encoder": '''\
@imgxfer.hookimpl
def register_encoders(register: Register) -> None:
    register("$name", TinyConvEncoder)''',
    "generator": '''\
@imgxfer.hookimpl
def register_generators(register: Register) -> None:
    register("$name", MeanImageGenerator)''',
    "adapter": '''\
@imgxfer.hookimpl
def register_adapters(register: Register) -> None:
    register("$name", NearestClassMean)''',
    "captioner": '''\
@imgxfer.hookimpl
def register_captioners(register: Register) -> None:
    register("$name", LabelCaptioner)''',
    "dataset": '''\
@imgxfer.hookimpl
def register_datasets(register: Register) -> None:
    register("$name", make_dataset)''',
}

COMPONENT = {}

COMPONENT["encoder"] = '''\
"""Encoder ``$name``: a tiny convolutional network.

Protocol: :class:`imgxfer.plugin.protocols.Encoder`.
"""

from __future__ import annotations

import torch
from torch import nn

from imgxfer import Budget, ImageDataset, NullProgress, Progress, UserError, prepare


class TinyConvEncoder(nn.Module):
    """Tiny CNN: two strided convolutions and global average pooling (2 x width features).

    ``in_channels`` 0 (the default) follows the data: ``imgxfer run`` replaces it with the
    run's image channels (3 when source or target is colour, else 1) and records that in
    config.toml, so colour images are not read as grey; built alone it reads grey (1).
    """

    # Declared ability: imgxfer calls pretrain() on the labelled source before transfer.
    pretrains = True

    def __init__(self, width: int = 16, input_size: int = 32, in_channels: int = 0,
                 lr: float = 2e-3, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        if width < 1 or input_size < 8 or in_channels not in (0, 1, 3):
            raise UserError(f"encoder '$name' needs width >= 1, input_size >= 8 and "
                            f"in_channels 0 (from the data), 1 or 3, got width={width}, "
                            f"input_size={input_size}, in_channels={in_channels}.")
        in_channels = in_channels or 1  # 0 reaches here only when built outside a run
        with torch.random.fork_rng(devices=[]):  # seeded weights; the global RNG is untouched
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
        self.feature_dim = 2 * width
        self.input_size = (input_size, input_size)
        self.in_channels = in_channels
        self.weights_source = "random"
        self.lr, self.batch_size, self.seed = lr, batch_size, seed

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (any channel count and size) -> this encoder's input."""
        return prepare(images, channels=self.in_channels, size=self.input_size,
                       mean=[0.5] * self.in_channels, std=[0.5] * self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def pretrain(self, source: ImageDataset, *, budget: Budget,
                 progress: Progress = NullProgress(),
                 device: torch.device = torch.device("cpu")) -> dict[str, float]:
        """Supervised training on the labelled source with a temporary linear head."""
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = nn.Linear(self.feature_dim, source.num_classes)
        model = nn.Sequential(self, head).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        batch = min(self.batch_size, len(source))
        model.train()
        budget.start()
        step = 0
        with progress.task("$name: pretrain on source", total=budget.steps) as task:
            while not budget.done(step):
                idx = torch.randint(len(source), (batch,), generator=g)
                x = self.preprocess(source.images[idx].to(device))
                loss = nn.functional.cross_entropy(model(x), source.labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                task.advance(1, loss=loss.item())
        model.eval()
        check = torch.randperm(len(source), generator=g)[:1000]
        with torch.no_grad():
            logits = model(self.preprocess(source.images[check].to(device)))
        accuracy = (logits.argmax(1).cpu() == source.labels[check]).float().mean().item()
        self.weights_source = f"trained on {source.domain}"
        return {"pretrain_steps": step, "source_train_accuracy": accuracy}
'''

COMPONENT["generator"] = '''\
"""Generator ``$name``: class mean image plus noise.

Protocol: :class:`imgxfer.plugin.protocols.Generator`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from imgxfer import Budget, FitResult, GeneratorData, Progress, UserError


class MeanImageGenerator:
    """Class mean image plus Gaussian noise scaled by the class's per-pixel spread."""

    conditioning = frozenset({"label"})  # sample() follows labels, not the prompts' text
    trains_by_steps = False  # fit() only averages: --generator-steps 0 is accepted

    def __init__(self, noise: float = 0.5) -> None:
        if not 0 <= noise <= 5:
            raise UserError(f"generator '$name' needs 0 <= noise <= 5, got {noise}.")
        self.noise = noise
        self.mean: torch.Tensor | None = None  # [classes, C, H, W]
        self.std: torch.Tensor | None = None

    @property
    def num_classes(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def resolved_options(self) -> dict[str, float]:
        return {"noise": self.noise}

    def fit(self, data: GeneratorData, *, budget: Budget, progress: Progress,
            device: torch.device) -> FitResult:
        """Per class: the mean of its target-domain images (all its images when the target
        has none) and the per-pixel standard deviation over all its images."""
        images, labels = data.images.float().cpu(), data.labels.long().cpu()
        target = torch.tensor([d == data.target_domain for d in data.domains], dtype=torch.bool)
        k = len(data.class_names)
        mean = torch.zeros(k, *images.shape[1:])
        std = torch.zeros_like(mean)
        with progress.task("$name: class means", total=k) as task:
            for c in range(k):
                mine = labels == c
                if not mine.any():
                    raise UserError(f"generator '$name' has no image of class "
                                    f"{data.class_names[c]!r} to learn from.")
                own = mine & target
                mean[c] = images[own if own.any() else mine].mean(0)
                std[c] = images[mine].std(0, unbiased=False)
                task.advance(1)
        self.mean, self.std = mean, std
        return FitResult(0)  # no training steps, no loss curves

    def sample(self, prompts: Sequence[str], labels: Sequence[int] | torch.Tensor, *,
               seed: int, device: torch.device) -> torch.Tensor:
        if self.mean is None or self.std is None:
            raise UserError("generator '$name' must be fitted or loaded before it samples.")
        labels = torch.as_tensor(labels, dtype=torch.long).cpu().reshape(-1)
        if len(labels) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.mean)):
            raise UserError(f"generator '$name' draws classes 0 to {len(self.mean) - 1}, "
                            f"got label {int(labels.max())}.")
        g = torch.Generator().manual_seed(seed)  # drawn on the CPU: same seed, same images
        eps = torch.randn((len(labels), *self.mean.shape[1:]), generator=g)
        mean, std = self.mean.to(device)[labels.to(device)], self.std.to(device)[labels.to(device)]
        return (mean + self.noise * std * eps.to(device)).clamp(0, 1).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.mean is None or self.std is None:
            return {}
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"mean", "std"}:
            raise UserError(f"generator '$name' expects a state with 'mean' and 'std', got "
                            f"{', '.join(sorted(state)) or 'nothing'}.")
        self.mean, self.std = state["mean"].float().cpu(), state["std"].float().cpu()
'''

COMPONENT["adapter"] = '''\
"""Adapter ``$name``: nearest class mean in the encoder's feature space.

Protocol: :class:`imgxfer.plugin.protocols.Adapter`.
"""

from __future__ import annotations

from typing import Any

import torch

from imgxfer import Budget, Classifier, Progress, TransferData, UserError


class NearestClassMean:
    """Nearest class mean of the target shots' (and synthetic images') features."""

    uses = frozenset({"target_labelled", "synthetic"})
    trains_by_steps = False  # nothing is trained: --adapter-steps 0 is accepted

    def __init__(self, use_synthetic: bool = True, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise UserError(f"adapter '$name' needs batch_size >= 1, got {batch_size}.")
        self.use_synthetic, self.batch_size = use_synthetic, batch_size

    def fit(self, encoder: Any, data: TransferData, *, budget: Budget, progress: Progress,
            device: torch.device) -> Classifier:
        """The class means m_k as a linear head: logits m_k.f - |m_k|^2 / 2 rank classes
        exactly as the distance |f - m_k| does (nearest first)."""
        parts = [data.target_labelled]
        if self.use_synthetic and data.synthetic is not None:
            parts.append(data.synthetic)
        k = len(data.class_names)
        encoder.eval()
        feats, labels = [], []
        batches = sum(-(-len(p) // self.batch_size) for p in parts)
        with torch.no_grad(), progress.task("$name: class means", total=batches) as task:
            for part in parts:
                for start in range(0, len(part), self.batch_size):
                    images = part.images[start:start + self.batch_size].to(device)
                    feats.append(encoder(encoder.preprocess(images)).float())
                    labels.append(part.labels[start:start + self.batch_size].to(device))
                    task.advance(1)
        counts = torch.bincount(torch.cat(labels), minlength=k) if labels else torch.zeros(k)
        missing = [data.class_names[c] for c in range(k) if counts[c] == 0]
        if missing:
            raise UserError(f"adapter '$name' needs a labelled target or synthetic image of "
                            f"every class, and {', '.join(missing)} has none (give --shots 1 "
                            "or more).")
        f, y = torch.cat(feats), torch.cat(labels)
        means = torch.zeros(k, f.shape[1], device=device).index_add_(0, y, f)
        means /= counts.to(device).unsqueeze(1)
        classifier = Classifier(encoder, k).to(device)
        with torch.no_grad():
            classifier.head.weight.copy_(means)
            classifier.head.bias.copy_(-0.5 * means.pow(2).sum(1))
        return classifier.eval()
'''

COMPONENT["captioner"] = '''\
"""Captioner ``$name``: captions from a template.

Protocol: :class:`imgxfer.plugin.protocols.Captioner`.
"""

from __future__ import annotations

import string
from typing import Any, Sequence

import torch

from imgxfer import UserError

FIELDS = ("description", "label", "domain")


class LabelCaptioner:
    """Captions from the class name, the dataset's description and its domain."""

    def __init__(self, template: str = "a {description} {label}, domain {domain}") -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            raise UserError(f"captioner '$name': template {template!r} is invalid "
                            f"({exc}).") from None
        if not fields <= set(FIELDS) or "label" not in fields:
            raise UserError(f"captioner '$name': template {template!r} must use {{label}} "
                            "and may use {description} and {domain}, nothing else.")
        self.template = template

    def caption(self, images: torch.Tensor | None, labels: torch.Tensor | None = None, *,
                class_names: Sequence[str], domain: str, description: str = "",
                classifier: Any = None) -> list[str]:
        if labels is not None:
            words = [class_names[int(y)] for y in labels]
        elif images is None:
            raise ValueError("caption() needs images or labels")
        elif classifier is not None:  # unlabelled images: describe the classifier's guess
            with torch.no_grad():
                guess = classifier(images).argmax(1).tolist()
            words = [f"likely {class_names[y]}" for y in guess]
        else:
            words = ["of unknown class"] * len(images)
        return [" ".join(self.template.format(description=description or "image", label=w,
                                              domain=domain).split()) for w in words]
'''

COMPONENT["dataset"] = '''\
"""Dataset ``$name``: synthetic stripes.

The factory returns an :class:`imgxfer.data.dataset.ImageDataset` (see imgxfer.plugin.protocols).
"""

from __future__ import annotations

import torch

from imgxfer import ImageDataset, UserError

CLASSES = ["horizontal stripe", "vertical stripe", "diagonal stripe"]


def make_dataset(n_per_class: int = 50, size: int = 32, noise: float = 0.1,
                 seed: int = 0) -> ImageDataset:
    """Stripes (horizontal, vertical, diagonal) at random positions and widths."""
    if n_per_class < 1 or size < 8 or not 0 <= noise <= 1:
        raise UserError(f"dataset '$name' needs n_per_class >= 1, size >= 8 and "
                        f"0 <= noise <= 1, got n_per_class={n_per_class}, size={size}, "
                        f"noise={noise}.")
    g = torch.Generator().manual_seed(seed)
    n = len(CLASSES) * n_per_class
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    rows = torch.arange(size).view(1, size, 1).expand(n, size, size)
    cols = torch.arange(size).view(1, 1, size).expand(n, size, size)
    # The coordinate a stripe runs across: the row, the column, or the anti-diagonal.
    across = torch.where((labels == 0).view(n, 1, 1), rows,
                         torch.where((labels == 1).view(n, 1, 1), cols, (rows + cols) // 2))
    start = torch.randint(1, size - 4, (n, 1, 1), generator=g)
    width = torch.randint(1, 4, (n, 1, 1), generator=g)
    stripes = ((across >= start) & (across < start + width)).float()
    images = (stripes + noise * torch.rand(stripes.shape, generator=g)).clamp(0, 1)
    # Captions read "a {description} {class name}": "a synthetic vertical stripe".
    return ImageDataset(images.unsqueeze(1), labels, list(CLASSES), domain="$name",
                        description="synthetic")
'''

TESTS = '''\
"""Tests of the $name plugin: imgxfer's contract kit for each component, the installed
entry point, and the behaviour each component promises."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
$test_imports

$component_imports

PLUGIN = "$name"


@pytest.fixture
def only_this_plugin(monkeypatch):
    """The CLI with this plugin alone (plus imgxfer's own), failing loudly if it breaks."""
    monkeypatch.setenv("IMGXFER_LOAD_PLUGINS", PLUGIN)
    monkeypatch.setenv("IMGXFER_STRICT_PLUGINS", "1")
    reset_host()
    yield
    reset_host()


def test_entry_point_loads(only_this_plugin):
    """`imgxfer list` shows the components: the installed entry point loads and registers."""
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    ours = {(r["kind"], r["name"]) for r in json.loads(result.stdout) if r["plugin"] == PLUGIN}
    assert ours == {$expected
    }


$kind_tests
'''

BASE_TEST_IMPORTS = ["from imgxfer import testing", "from imgxfer.cli.app import cli",
                     "from imgxfer.plugin.host import reset_host"]
TEST_IMPORTS = {
    "encoder": [],
    "generator": ["from imgxfer.core.budget import Budget", "from imgxfer.data.dataset import GeneratorData",
                  "from imgxfer.core.progress import NullProgress"],
    "adapter": ["from imgxfer.core.budget import Budget",
                "from imgxfer.data.dataset import ImageDataset, TransferData",
                "from imgxfer.core.progress import NullProgress"],
    "captioner": [],
    "dataset": [],
}

TEST = {}

TEST["encoder"] = '''\
def test_encoder_contract():
    testing.check_encoder(TinyConvEncoder, width=4, input_size=16)


def test_encoder_features_and_seed():
    encoder = TinyConvEncoder(width=4, input_size=16).eval()
    images = torch.rand(3, 3, 28, 28)  # any channel count and size: preprocess adapts them
    with torch.no_grad():
        features = encoder(encoder.preprocess(images))
        again = TinyConvEncoder(width=4, input_size=16).eval()(encoder.preprocess(images))
    assert features.shape == (3, encoder.feature_dim) == (3, 8)
    assert torch.equal(features, again)  # same seed, same weights'''

TEST["generator"] = '''\
def test_generator_contract():
    testing.check_generator(MeanImageGenerator)


def test_generator_draws_near_the_class_mean():
    images = torch.cat([torch.full((4, 1, 8, 8), 0.2), torch.full((4, 1, 8, 8), 0.8)])
    images += 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 4 + [1] * 4)
    data = GeneratorData(images=images, labels=labels, captions=["x"] * 8,
                         domains=["target"] * 8, class_names=["dark", "light"],
                         target_domain="target")
    generator = MeanImageGenerator(noise=1.0)
    generator.fit(data, budget=Budget(0), progress=NullProgress(), device=torch.device("cpu"))
    drawn = generator.sample(["a", "b"], [0, 1], seed=3, device=torch.device("cpu"))
    assert drawn.shape == (2, 1, 8, 8)
    assert abs(drawn[0].mean() - 0.2) < 0.05 and abs(drawn[1].mean() - 0.8) < 0.05
    assert torch.equal(drawn, generator.sample(["a", "b"], [0, 1], seed=3,
                                               device=torch.device("cpu")))'''

TEST["adapter"] = '''\
def test_adapter_contract():
    testing.check_adapter(NearestClassMean)


class _Pixels(torch.nn.Module):
    """The image's pixels as its features: a transparent encoder for the test."""

    feature_dim, input_size, in_channels, weights_source = 16, (4, 4), 1, "none"

    def preprocess(self, images):
        return images

    def forward(self, x):
        return x.flatten(1)


def test_adapter_classifies_by_the_nearest_class_mean():
    g = torch.Generator().manual_seed(0)
    centres = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    labels = torch.tensor([0, 1] * 10)
    images = centres[labels] + 0.2 * torch.randn(20, 1, 4, 4, generator=g)
    shots = ImageDataset(images[:6], labels[:6], ["zero", "one"], "target")
    test = ImageDataset(images[6:], labels[6:], ["zero", "one"], "target")
    data = TransferData(source=shots, target_labelled=shots, target_unlabelled=shots)
    classifier = NearestClassMean().fit(_Pixels(), data, budget=Budget(0),
                                        progress=NullProgress(), device=torch.device("cpu"))
    with torch.no_grad():
        predicted = classifier(test.images.tensor()).argmax(1)
    assert torch.equal(predicted, test.labels)'''

TEST["captioner"] = '''\
def test_captioner_contract():
    testing.check_captioner(LabelCaptioner)


def test_captions_name_the_class():
    captions = LabelCaptioner().caption(None, torch.tensor([1, 0]), class_names=["cat", "dog"],
                                        domain="photos", description="pet")
    assert captions == ["a pet dog, domain photos", "a pet cat, domain photos"]'''

TEST["dataset"] = '''\
def test_dataset_contract():
    testing.check_dataset(make_dataset, n_per_class=5)


def test_dataset_is_balanced_and_seeded():
    data = make_dataset(n_per_class=5, size=16)
    assert data.images.shape == (15, 1, 16, 16) and data.class_counts() == [5, 5, 5]
    images = data.images.tensor()
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, make_dataset(n_per_class=5, size=16).images.tensor())
    assert not torch.equal(images, make_dataset(n_per_class=5, size=16, seed=1).images.tensor())'''
