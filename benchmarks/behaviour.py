"""Behaviour pinned across a refactor: a fixed set of runs through the command line, their
metrics.json (and a tune study's trials) with every timing taken out, written to one JSON
file per code version; ``--compare`` says whether two versions agree to the last digit.

Issue 27 moved every module; this is how it showed that nothing a run computes changed:

    python behaviour.py --label before    # on the old code (PYTHONPATH or its venv)
    python behaviour.py --label after     # on the new code
    python behaviour.py --compare before after

It drives ``python -m imgxfer``, so it runs on any layout of the package. One thread and
the same seeds, so two versions that compute the same thing print the same digits.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "behaviour"
SMALL = ["--encoder-steps", "20", "--adapter-steps", "20"]
RUNS: dict[str, list[str]] = {
    "default": ["run"],
    "seeds": ["run", "--target", "digits", "--shots", "3", "--generator", "none",
              "--seeds", "0,1", *SMALL],
    "translate": ["run", "--target", "digits", "--shots", "0", "--synthesis", "translate",
                  "--generator-steps", "20", "--synthetic-per-class", "10",
                  "--compare", "finetune,self-training", *SMALL],
    "segment": ["run", "--task", "segment", "--shots", "0", "--generator", "none",
                "--compare", "source-only,adabn", *SMALL],
    "detect": ["run", "--task", "detect", "--shots", "0", "--generator", "none", *SMALL],
    "tune": ["tune", "--target", "digits", "--shots", "3", "--generator", "none",
             "--n-trials", "3", "--param", "adapter.lr", *SMALL],
}
# Keys whose values are clocks, places or versions, not results.
# Keys that end in, or are, one of VOLATILE, or contain one of VOLATILE_PART.
VOLATILE = ("_s", "path", "folder", "version", "created", "host", "date")
VOLATILE_PART = ("time", "seconds")


def _volatile(key: str) -> bool:
    return (any(key.endswith(v) or key == v.strip("_") for v in VOLATILE)
            or any(part in key for part in VOLATILE_PART))


def stable(value: Any) -> Any:
    """``value`` without its volatile keys, recursively."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def collect(out: Path) -> dict[str, Any]:
    """Every metrics.json, summary.json and trials.csv under ``out``, by relative path."""
    found: dict[str, Any] = {}
    for path in sorted(out.rglob("*")):
        name = "/".join(path.relative_to(out).parts[1:])  # drop the dated run-folder name
        if path.name in ("metrics.json", "summary.json"):
            found[name] = stable(json.loads(path.read_text()))
        elif path.name == "trials.csv":
            with path.open() as f:
                found[name] = [stable(row) for row in csv.DictReader(f)]
    return found


def record(label: str, only: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result: dict[str, Any] = {}
    for name in only:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "imgxfer", *RUNS[name], "--out", tmp]
            print("$", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            result[name] = collect(Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{label}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **result}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in (differences(a[k], b[k], f"{where}/{k}") if k in a and k in b
                          else [f"{where}/{k}: only in {'first' if k in a else 'second'}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare(first: str, second: str) -> int:
    a, b = (stable(json.loads((RESULTS / f"{n}.json").read_text())) for n in (first, second))
    diff = differences(a, b)
    for line in diff[:40]:
        print(line)
    values = sum(1 for _ in json.dumps(a).split(","))
    print(f"{first} vs {second}: {len(diff)} differences over runs {sorted(a)} (~{values} values)")
    return 1 if diff else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="record the runs under this name")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"of {', '.join(RUNS)}")
    parser.add_argument("--compare", nargs=2, metavar=("FIRST", "SECOND"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.label:
        parser.error("give --label or --compare")
    record(args.label, args.runs.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
