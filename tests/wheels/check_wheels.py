"""Install the built wheels of imgxfer and its first-party plugins, not editable, into a
fresh virtual environment and use them there, away from the checkout.

    python tests/wheels/check_wheels.py DIST [--no-seed] [--keep]

DIST holds what `make wheels` builds (an sdist and a wheel of imgxfer and of each plugin
under plugins/). The check:

1. each wheel holds every file of its package's source folder (modules, py.typed,
   registry.toml, the scaffold templates), plugins declare their entry point, and the
   version in each file name is the one in its pyproject.toml, and each carries LICENSE;
2. a new virtual environment gets imgxfer's wheel from pip, which resolves its
   dependencies; imgxfer then imports from that environment, not from the checkout;
3. `imgxfer --version`, `imgxfer list`, `imgxfer plugins --available` (registry.toml),
   `imgxfer plugin new` (the templates) and a tiny `imgxfer run` work there;
4. `imgxfer install timm --find-links DIST` installs the timm plugin's wheel, and
   `imgxfer plugins` and `imgxfer list` show it loaded.

`make check-wheels` builds the wheels and runs this; CI runs it after the tests.

Seeding: pip here takes torch's CUDA build (about 5 GB with the nvidia-* packages it
requires), which took about 100 s to copy into a new environment. So by default torch,
torchvision and everything they require are hard-linked into the new environment from
the one that runs this script (their installed files, not a path to them). pip still
installs imgxfer's wheel and every other dependency, and checks that the linked torch
meets imgxfer's requirements. --no-seed installs everything with pip, as a user's
`pip install imgxfer` does.

The environment lives in build/check-wheels-*/ and is removed afterwards, unless --keep
is given or CI is set (CI's clone is thrown away, and removing the folder's 40,000 files
took 50 s here).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
# Distribution -> its folder in the checkout (pyproject.toml) and its import package.
PROJECTS = {
    "imgxfer": (ROOT, "imgxfer"),
    "imgxfer-timm": (ROOT / "plugins/imgxfer-timm", "imgxfer_timm"),
    "imgxfer-diffusers": (ROOT / "plugins/imgxfer-diffusers", "imgxfer_diffusers"),
    "imgxfer-transformers": (ROOT / "plugins/imgxfer-transformers", "imgxfer_transformers"),
}
SEEDED = ("torch", "torchvision")
# The smallest run that goes through the whole chain on built-in data: a few seconds.
TINY_RUN = ["run", "--source", "syndigits", "--source-opt", "n_per_class=20",
            "--source-opt", "size=16", "--target", "mnist", "--target-opt", "n_per_class=20",
            "--target-opt", "size=16", "--shots", "2", "--encoder-opt", "width=4",
            "--encoder-opt", "input_size=16", "--generator", "none", "--encoder-steps", "5",
            "--adapter-steps", "5", "--no-quality", "--no-compare-synthetic",
            "--workers", "0", "--name", "wheel-check"]


P = ParamSpec("P")
T = TypeVar("T")
PASSED: list[str] = []


class CheckFailed(Exception):
    """One sentence saying which check failed, and what was seen."""


def step(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Print each step that passed, with the seconds it took."""
    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            print(f"ok  {what} ({time.perf_counter() - start:.1f} s)", flush=True)
            PASSED.append(what)
            return result
        return timed
    return wrap


# -- 1. the files ------------------------------------------------------------------------
def version_of(folder: Path) -> str:
    project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    return str(project["project"]["version"])


def built_files(dist: Path, distribution: str) -> tuple[Path, Path]:
    """The one wheel and the one sdist of ``distribution`` in ``dist``, at the version its
    pyproject.toml names."""
    folder, _ = PROJECTS[distribution]
    version = version_of(folder)
    stem = f"{canonicalize_name(distribution).replace('-', '_')}-{version}"
    wheels = [p for p in dist.glob("*.whl")
              if parse_wheel_filename(p.name)[0] == canonicalize_name(distribution)]
    sdist = dist / f"{stem}.tar.gz"
    if len(wheels) != 1 or not sdist.is_file():
        raise CheckFailed(f"{dist} should hold one wheel and {sdist.name} of {distribution} "
                          f"{version}; it holds {sorted(p.name for p in dist.iterdir())}")
    if str(parse_wheel_filename(wheels[0].name)[1]) != version:
        raise CheckFailed(f"{wheels[0].name} is not version {version} (pyproject.toml)")
    return wheels[0], sdist


def source_files(folder: Path, package: str) -> set[str]:
    """Every file of the package's source folder, as a wheel names it."""
    base = folder / "src"
    return {p.relative_to(base).as_posix() for p in (base / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@step("each wheel holds its package's files, entry point, version and licence")
def check_contents(dist: Path) -> dict[str, Path]:
    wheels = {}
    for distribution, (folder, package) in PROJECTS.items():
        wheel, _ = built_files(dist, distribution)
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            missing = source_files(folder, package) - names
            if missing:
                raise CheckFailed(f"{wheel.name} lacks {sorted(missing)}")
            entry_points = next((archive.read(n).decode() for n in names
                                 if n.endswith(".dist-info/entry_points.txt")), "")
            if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
                raise CheckFailed(f"{wheel.name} carries no licence text (LICENSE)")
        expected = ("[console_scripts]\nimgxfer = imgxfer.cli:main" if package == "imgxfer"
                    else f"[imgxfer]\n{distribution.removeprefix('imgxfer-')} = {package}")
        if expected not in entry_points:
            raise CheckFailed(f"{wheel.name}'s entry_points.txt lacks {expected!r}")
        wheels[distribution] = wheel
    return wheels


# -- 2. a fresh environment --------------------------------------------------------------
def requirement_closure(roots: Iterable[str]) -> list[str]:
    """``roots`` and every distribution they require, transitively, as installed here
    (markers evaluated for this Python, extras followed)."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in roots]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in ("", *extras)):
                todo.append((req.name, tuple(sorted(req.extras))))
    return sorted({name for name, _ in seen})


def link_distribution(name: str, site: Path) -> int:
    """Hard-link (copy across file systems) an installed distribution's files under
    site-packages into ``site``; its scripts in bin/ are left out."""
    dist = md.distribution(name)
    count = 0
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file)))
        if file.parts[0] == ".." or not source.is_file():
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        count += 1
    return count


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], what: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise CheckFailed(f"{what} failed (exit status {result.returncode}):\n"
                          f"$ {' '.join(cmd)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


class Environment:
    """A new virtual environment under ``work``; commands run in ``work``, never in the
    checkout, with imgxfer's variables cleared and its cache inside ``work``."""

    def __init__(self, work: Path):
        self.work, self.venv = work, work / "venv"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("IMGXFER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env.update(IMGXFER_CACHE=str(work / "cache"),
                        PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")

    def __call__(self, program: str, *args: str, what: str = "") -> str:
        return run([str(self.venv / "bin" / program), *args], cwd=self.work, env=self.env,
                   what=what or f"{program} {' '.join(args[:3])}")

    @step("created a new virtual environment")
    def create(self) -> None:
        run([sys.executable, "-m", "venv", str(self.venv)], cwd=self.work, env=self.env,
            what="python -m venv")

    @step(f"linked {', '.join(SEEDED)} and what they require from this environment")
    def seed(self) -> None:
        site = Path(self("python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
                         ).strip())
        there = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
        for name in requirement_closure(SEEDED):
            if canonicalize_name(name) not in there:  # pip and setuptools come with venv
                link_distribution(name, site)

    @step("pip installed imgxfer's wheel and its dependencies")
    def install(self, wheel: Path) -> None:
        self("pip", "install", "--quiet", "--no-compile", str(wheel),
             what=f"pip install {wheel.name}")


# -- 3. and 4. using it ------------------------------------------------------------------
@step("imgxfer --version and the package imported from the new environment")
def check_version(env: Environment) -> str:
    version = version_of(ROOT)
    shown = env("imgxfer", "--version").strip()
    if shown != f"imgxfer, version {version}":
        raise CheckFailed(f"imgxfer --version printed {shown!r}, not version {version}")
    found = json.loads(env("python", "-c", "import imgxfer, json, importlib.metadata as md; "
                           "d = md.distribution('imgxfer'); print(json.dumps([imgxfer.__file__, "
                           "imgxfer.__version__, d.read_text('direct_url.json')]))"))
    where, module_version, direct_url = found
    if not Path(where).is_relative_to(env.venv) or module_version != version:
        raise CheckFailed(f"imgxfer {module_version} was imported from {where}, not from "
                          f"{env.venv} at version {version}")
    if json.loads(direct_url or "{}").get("dir_info", {}).get("editable"):
        raise CheckFailed("imgxfer is installed editable")
    return version


@step("imgxfer list, plugins --available and plugin new (package data)")
def check_listing(env: Environment) -> None:
    rows = json.loads(env("imgxfer", "list", "--json"))
    names = {(r["kind"], r["name"]) for r in rows}
    for needed in [("encoders", "smallcnn"), ("generators", "gan"), ("adapters", "finetune"),
                   ("datasets", "syndigits")]:
        if needed not in names:
            raise CheckFailed(f"imgxfer list shows no {needed[0][:-1]} {needed[1]!r}")
    known = {r["name"] for r in json.loads(env("imgxfer", "plugins", "--available", "--json"))}
    if not {"builtin", "timm", "diffusers", "transformers"} <= known:
        raise CheckFailed(f"plugins --available (registry.toml) lists only {sorted(known)}")
    env("imgxfer", "plugin", "new", "demo", "--kind", "encoder", "--out", "skeleton")
    if not (env.work / "skeleton/imgxfer-demo/src/imgxfer_demo/encoder.py").is_file():
        raise CheckFailed("imgxfer plugin new wrote no encoder module (templates)")


@step("a tiny imgxfer run")
def check_run(env: Environment, version: str) -> None:
    metrics = json.loads(env("imgxfer", *TINY_RUN, "--out", "runs", "--json"))
    (folder,) = (env.work / "runs").iterdir()
    for name in ("config.toml", "metrics.json", "report.html", "classifier.safetensors"):
        if not (folder / name).is_file():
            raise CheckFailed(f"the tiny run wrote no {name} in {folder}")
    if metrics.get("imgxfer_version") != version:
        raise CheckFailed(f"the run's metrics.json names imgxfer {metrics.get('imgxfer_version')}")


@step("imgxfer install timm from the wheel folder; plugins and list show it")
def check_install(env: Environment, dist: Path, wheel: Path) -> None:
    loaded = {p["name"] for p in json.loads(env("imgxfer", "plugins", "--json"))}
    if "timm" in loaded:
        raise CheckFailed("the timm plugin is there before imgxfer install timm")
    said = env("imgxfer", "install", "timm", "--find-links", str(dist))
    version = parse_wheel_filename(wheel.name)[1]
    if f"installed imgxfer-timm {version} (from {wheel})" not in said:
        raise CheckFailed(f"imgxfer install timm said: {said}")
    plugins = {p["name"]: p for p in json.loads(env("imgxfer", "plugins", "--json"))}
    timm = plugins.get("timm", {})
    if timm.get("status") != "ok" or timm.get("version") != str(version):
        raise CheckFailed(f"imgxfer plugins shows timm as {timm or 'missing'}")
    encoders = {(r["name"], r["plugin"]) for r in json.loads(env("imgxfer", "list", "encoders",
                                                                 "--json"))}
    if ("timm/<...>", "timm") not in encoders:
        raise CheckFailed(f"imgxfer list encoders shows no timm/<...>: {sorted(encoders)}")


def check_all(dist: Path, work: Path, seed: bool) -> None:
    wheels = check_contents(dist)
    env = Environment(work)
    env.create()
    if seed:
        env.seed()
    env.install(wheels["imgxfer"])
    version = check_version(env)
    check_listing(env)
    check_run(env, version)
    check_install(env, dist, wheels["imgxfer-timm"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", type=Path, help="folder that `make wheels` wrote")
    parser.add_argument("--no-seed", action="store_true",
                        help="install torch and torchvision with pip too (slower)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the environment and the run in build/ to look at (the "
                             "default where CI is set: removing its 40,000 files took 50 s "
                             "here, and CI's clone is thrown away)")
    args = parser.parse_args()
    keep = args.keep or bool(os.environ.get("CI"))
    start = time.perf_counter()
    (ROOT / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="check-wheels-", dir=ROOT / "build"))
    failure = None
    try:
        check_all(args.dist.resolve(), work, seed=not args.no_seed)
    except CheckFailed as failed:
        failure = failed
    finally:
        removing = time.perf_counter()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{'kept' if keep else 'removed'} {work} "
              f"({time.perf_counter() - removing:.1f} s); "
              f"{time.perf_counter() - start:.0f} s in all", flush=True)
    if failure is not None:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
    print(f"wheels: {len(PASSED)} passed, {int(failure is not None)} failed")
    return 1 if failure is not None else 0


if __name__ == "__main__":
    sys.exit(main())
