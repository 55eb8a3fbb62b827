"""Streamed image folders (issue 16): peak memory of `imgxfer run` as the folders grow,
and the loader's throughput against torchvision's ImageFolder + DataLoader.

    taskset -c 0,1 .venv/bin/python benchmarks/streaming.py            # everything
    .venv/bin/python benchmarks/streaming.py --table-only              # print the tables

1. Data: for each size N (1,000, 10,000, 50,000) a source and a target folder of N/2
   224-px JPEGs each, 10 classes: the built-in rendered digits (source) and the same
   digits on a coloured, noisy background (target), enlarged to 224 px. Made once into
   --data (about 8 KB per image).
2. Memory: `imgxfer run --generator none` (smallcnn, which reads 32 px) with the linear
   probe and with fine-tuning on each size, with the folders' default ``stream=auto``
   (sets that fit in 512 MB decoded are kept in memory, as uint8) and with
   ``stream=always`` (decoded from the files at every use), as a subprocess; its peak memory is the highest sum, sampled every 0.2 s,
   of the proportional set size (PSS: shared pages counted once) of the run and its
   DataLoader workers. Goal: at 50,000 within 1.5x of 1,000.
3. Throughput: images per second through imgxfer's streamed store and through
   ``torchvision.datasets.ImageFolder`` + ``DataLoader``, the same folder, the same
   decode-crop-resize-to-tensor work, the same batch size and workers, measured
   alternately in this one process (a ratio). Goal: ratio >= 0.9.

Results are appended to benchmarks/results/streaming.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "streaming.jsonl"
SIZES = (1000, 10000, 50000)
SIDE = 224


# --------------------------------------------------------------------------- data
def make_folders(root: Path, n: int) -> tuple[Path, Path]:
    """``root/src-N`` and ``root/tgt-N``, N/2 JPEGs each (kept between invocations)."""
    import torch
    from PIL import Image

    from imgxfer.components.datasets.digits import syndigits

    out = []
    for role in ("src", "tgt"):
        folder = root / f"{role}-{n}"
        done = folder / ".done"
        out.append(folder)
        if done.exists():
            continue
        per_class = n // 20
        data = syndigits(n_per_class=per_class, size=32, seed=0 if role == "src" else 1)
        rng = np.random.default_rng(7 if role == "src" else 8)
        big = torch.nn.functional.interpolate(data.images.tensor(), size=(SIDE, SIDE),
                                              mode="bilinear", align_corners=False)
        for i, (image, label) in enumerate(zip(big, data.labels.tolist(), strict=True)):
            array = image.repeat(3, 1, 1).permute(1, 2, 0).numpy()
            if role == "tgt":  # coloured paper, noise: another domain
                paper = rng.uniform(0, 1, 3)
                array = np.clip(np.abs(array - paper) + rng.normal(0, 0.05, array.shape), 0, 1)
            path = folder / data.class_names[label] / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((array * 255).astype(np.uint8)).save(path, quality=90)
        done.touch()
    return out[0], out[1]


# --------------------------------------------------------------------------- memory
def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def peak_memory(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``command``; (peak PSS of its process tree in MB, seconds, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return peak / 1024, time.perf_counter() - start, proc.returncode


def memory_cell(args: argparse.Namespace, n: int, adapter: str, stream: str) -> dict:
    src, tgt = make_folders(args.data, n)
    imgxfer = str(Path(sys.executable).parent / "imgxfer")
    out = args.data / "runs"
    command = [imgxfer, "run", "--source", f"folder:{src}", "--target", f"folder:{tgt}",
               "--generator", "none", "--adapter", adapter, "--shots", "10",
               "--workers", str(args.workers), "--out", str(out), "--name", f"{adapter}-{n}",
               "--source-opt", f"stream={stream}", "--target-opt", f"stream={stream}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    mb, seconds, code = peak_memory(command, env)
    return {"kind": "memory", "images": n, "adapter": adapter, "stream": stream,
            "peak_pss_mb": round(mb, 1),
            "seconds": round(seconds, 1), "exit": code, "workers": args.workers}


# --------------------------------------------------------------------------- throughput
def throughput_cell(args: argparse.Namespace, n: int, size: int) -> dict:
    """Images per second, imgxfer's store vs ImageFolder + DataLoader, alternated."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from imgxfer.components.datasets.folder import folder
    from imgxfer.data import images as store_module

    torch.set_num_threads(args.threads)
    src, _ = make_folders(args.data, n)
    store_module.set_workers(args.workers)
    ours = folder(str(src), size=size, stream="always").images
    # The same work: decode, scale the short side to `size`, centre crop, to float tensor.
    theirs = ImageFolder(str(src), transform=T.Compose([T.Resize(size), T.CenterCrop(size),
                                                        T.ToTensor()]))
    limit = min(len(ours), args.images)
    order = torch.randperm(len(ours), generator=torch.Generator().manual_seed(0))[:limit]
    batches = [order[i:i + 64] for i in range(0, limit, 64)]

    def run_ours() -> float:
        start = time.perf_counter()
        for _ in ours.batches(iter(batches)):
            pass
        return limit / (time.perf_counter() - start)

    def run_theirs() -> float:
        loader = DataLoader(theirs, batch_sampler=[b.tolist() for b in batches],
                            num_workers=args.workers)
        start = time.perf_counter()
        for _ in loader:
            pass
        return limit / (time.perf_counter() - start)

    a, b = [], []
    for _ in range(args.repeats):  # alternated, so drift in machine speed hits both
        a.append(run_ours())
        b.append(run_theirs())
    return {"kind": "throughput", "images": limit, "size": size, "workers": args.workers,
            "imgxfer_img_s": round(float(np.median(a)), 1),
            "imagefolder_img_s": round(float(np.median(b)), 1),
            "ratio": round(float(np.median(a) / np.median(b)), 3)}


# --------------------------------------------------------------------------- table
def table(rows: list[dict]) -> str:
    mem = {(r["stream"], r["adapter"], r["images"]): r for r in rows if r["kind"] == "memory"}
    lines = ["| stream | adapter | images | peak PSS (MB) | vs 1,000 | time (s) |",
             "|---|---|---|---|---|---|"]
    for (stream, adapter, n), r in sorted(mem.items()):
        base = mem.get((stream, adapter, SIZES[0]))
        ratio = f"{r['peak_pss_mb'] / base['peak_pss_mb']:.2f}x" if base else "–"
        lines.append(f"| {stream} | {adapter} | {n:,} | {r['peak_pss_mb']:.0f} | {ratio} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "| read size | workers | imgxfer (img/s) | ImageFolder (img/s) | ratio |",
              "|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "throughput"):
        lines.append(f"| {r['size']} px | {r['workers']} | {r['imgxfer_img_s']:.0f} | "
                     f"{r['imagefolder_img_s']:.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/imgxfer-streaming"))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--adapters", default="linear,finetune")
    parser.add_argument("--streams", default="auto,always",
                        help="the folders' stream option: auto (the default) and always")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=3000, help="images per throughput pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.table_only:
        print(table([json.loads(line) for line in RESULTS.read_text().splitlines()]))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    cells = []
    if not args.skip_throughput:
        cells += [lambda size=size: throughput_cell(args, sizes[0], size) for size in (32, SIDE)]
    if not args.skip_memory:
        cells += [lambda n=n, a=adapter, s=stream: memory_cell(args, n, a, s)
                  for stream in args.streams.split(",") for adapter in args.adapters.split(",")
                  for n in sizes]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for cell in cells:  # each result is kept as soon as it is measured
        rows.append(cell())
        with RESULTS.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
