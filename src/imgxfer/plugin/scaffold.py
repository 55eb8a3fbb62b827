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
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from packaging.version import Version

from imgxfer import UNKNOWN_VERSION, __version__
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
              "kinds": ", ".join(chosen), "title": name.replace("-", " "),
              "imgxfer": imgxfer_requirement()}
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
    hooks = "\n\n\n".join(fill(_template(f"hook_{k}.py.tmpl")) for k in kinds)
    exported = "".join(f'    "{FACTORY[k]}",\n' for k in kinds)
    files = {
        "pyproject.toml": fill(_template("pyproject.toml.tmpl"), description=_description(skeleton)),
        "README.md": fill(_template("README.md.tmpl"), components=_readme_components(skeleton),
                          run_examples=_run_examples(skeleton),
                          option_example=OPTION_EXAMPLE[kinds[0]]),
        ".gitignore": _template("gitignore.tmpl"),
        f"src/{skeleton.module}/__init__.py": fill(_template("init.py.tmpl"), imports=imports, hooks=hooks,
                                                   exported=exported),
        f"src/{skeleton.module}/py.typed": "",
    }
    for kind in kinds:
        files[f"src/{skeleton.module}/{kind}.py"] = fill(_template(f"{kind}.py.tmpl"))
    needed: dict[str, set[str]] = {}
    for line in [*BASE_TEST_IMPORTS, *(line for k in kinds for line in TEST_IMPORTS[k])]:
        module, names = line[len("from "):].split(" import ")
        needed.setdefault(module, set()).update(names.split(", "))
    test_imports = "\n".join(f"from {m} import {', '.join(sorted(n))}"
                              for m, n in sorted(needed.items()))
    files[f"tests/test_{skeleton.module[len('imgxfer_'):]}.py"] = fill(
        _template("tests.py.tmpl"), test_imports=test_imports,
        component_imports=imports,
        expected="".join(f'\n        ("{k}s", "{skeleton.name}"),' for k in kinds),
        kind_tests="\n\n".join(fill(_template(f"test_{k}.py.tmpl")) for k in kinds))
    return files


def imgxfer_requirement(version: str = __version__) -> str:
    """The imgxfer versions a new plugin says it works with: from this release up to the
    next one that may change the plugin API (the next minor release while imgxfer is
    0.x, the next major one after). Any imgxfer when this one does not know its own
    version (a source tree that was never installed)."""
    if version == UNKNOWN_VERSION:
        return "imgxfer"
    v = Version(version)
    upper = f"0.{v.minor + 1}" if v.major == 0 else str(v.major + 1)
    return f"imgxfer>={v.major}.{v.minor},<{upper}"


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

# The files' texts are string.Template files in templates/ (package data): $name,
# $module, $dist, $kinds, $title and $imgxfer everywhere, plus the blanks render() fills.
BASE_TEST_IMPORTS = ["from imgxfer.plugin import testing", "from imgxfer.cli import cli",
                     "from imgxfer.plugin.host import reset_host"]
TEST_IMPORTS = {
    "encoder": [],
    "generator": ["from imgxfer import Budget, GeneratorData, NullProgress"],
    "adapter": ["from imgxfer import Budget, ImageDataset, NullProgress, TransferData"],
    "captioner": [],
    "dataset": [],
}


def _template(name: str) -> str:
    return (files("imgxfer.plugin") / "templates" / name).read_text(encoding="utf-8")
