"""Data-parallel runs (issue 16): `imgxfer run` in one process against the same run under
`torchrun --nproc-per-node 2` (gloo, CPU), paired by seed.

    .venv/bin/python benchmarks/distributed.py            # 3 seeds, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/distributed.py --table-only

The run: syndigits -> digits, 10 shots, smallcnn, fine-tuning, no generator, the default
budget (200 encoder steps, 250 adapter steps). Each process uses one thread, so the
single-process run uses one core and the 2-process run two: the comparison is of what a
second process buys, with twice the images per step. Results are appended to
benchmarks/results/distributed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import cell  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "distributed.jsonl"
RUN = ["run", "--generator", "none", "--adapter", "finetune", "--device", "cpu",
       "--workers", "0", "--json"]


def one_run(processes: int, seed: int) -> dict:
    launcher = ([sys.executable] if processes == 1 else
                [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node",
                 str(processes), "--master-port", "29531"])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([*launcher, "-m", "imgxfer", *RUN, "--seed", str(seed),
                               "--out", out], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        folders = list(Path(out).iterdir())
    metrics = json.loads(done.stdout[done.stdout.index("{"):])
    return {"processes": processes, "seed": seed, "folders": len(folders),
            "accuracy": metrics["target"]["accuracy"], "seconds": round(seconds, 1),
            "world_size": metrics.get("distributed", {}).get("world_size", 1)}


def table(rows: list[dict]) -> str:
    by = {(r["processes"], r["seed"]): r for r in rows}
    seeds = sorted({s for p, s in by if (1, s) in by and (2, s) in by})
    one = [by[1, s]["accuracy"] for s in seeds]
    two = [by[2, s]["accuracy"] for s in seeds]
    return "\n".join([
        "| processes | accuracy | wall time (s) | run folders |", "|---|---|---|---|",
        f"| 1 | {cell(one)} | {cell([by[1, s]['seconds'] for s in seeds], 1)} | 1 |",
        f"| 2 (torchrun, gloo) | {cell(two)} | {cell([by[2, s]['seconds'] for s in seeds], 1)} "
        f"| {max(by[2, s]['folders'] for s in seeds)} |",
        "", f"paired difference (2 - 1) over seeds {seeds}: "
            f"{cell([b - a for a, b in zip(one, two, strict=True)], signed=True)}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for seed in map(int, args.seeds.split(",")):
            for processes in (1, 2):
                row = one_run(processes, seed)
                print(json.dumps(row), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table([json.loads(line) for line in RESULTS.read_text().splitlines()]))


if __name__ == "__main__":
    main()
