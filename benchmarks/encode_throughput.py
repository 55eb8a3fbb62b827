"""Encoding throughput: imgxfer's ``encode`` against a plain torchvision-style loop (the
same model and images, ``model(x)`` under ``torch.no_grad()``, batch 64) in the same
process, and the feature cache's hit time against encoding.

    OMP_NUM_THREADS=2 python benchmarks/encode_throughput.py --repeats 5

Cases: torchvision resnet18 at 224x224 (random weights: speed does not depend on them) and
the built-in smallcnn at 32x32. Throughput is the median over ``--repeats`` runs, baseline
and encode alternating so that machine load hits both alike. Goals: ratio >= 1.0 (encode
is no slower than the plain loop), cache hit >= 20x faster than encoding.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.components.encoders.torchvision_backbones import TorchvisionEncoder
from imgxfer.data.features import encode

BASELINE_BATCH = 64


def plain_loop(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What a torchvision tutorial writes: eval mode, no_grad, batches of 64."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), BASELINE_BATCH):
            out.append(encoder(encoder.preprocess(images[i:i + BASELINE_BATCH])))
    return torch.cat(out)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(name: str, encoder: nn.Module, images: torch.Tensor, repeats: int,
          batch_size: int | None) -> dict[str, float | str]:
    device = torch.device("cpu")
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    n = len(images)
    # Warm-up (oneDNN primitive caches, allocator) for both, and a correctness check.
    ref = plain_loop(encoder, images[:BASELINE_BATCH])
    got = encode(encoder, images[:BASELINE_BATCH], device, **kwargs)
    assert torch.allclose(ref, got, rtol=1e-3, atol=1e-4 * float(ref.abs().max())), name
    base_t, enc_t = [], []
    for _ in range(repeats):
        base_t.append(timed(lambda: plain_loop(encoder, images))[0])
        enc_t.append(timed(lambda: encode(encoder, images, device, **kwargs))[0])
    base, enc = statistics.median(base_t), statistics.median(enc_t)

    with tempfile.TemporaryDirectory() as folder:
        miss, first = timed(lambda: encode(encoder, images, device, cache=folder, **kwargs))
        hits = [timed(lambda: encode(encoder, images, device, cache=folder, **kwargs))
                for _ in range(repeats)]
        assert all(torch.equal(h[1], first) for h in hits), name
        hit = statistics.median(h[0] for h in hits)
    return {"case": name, "images": n, "baseline": n / base, "encode": n / enc,
            "ratio": base / enc, "encode_s": enc, "miss_s": miss, "hit_s": hit,
            "hit_speedup": enc / hit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n224", type=int, default=256, help="images for resnet18 at 224")
    parser.add_argument("--n32", type=int, default=8192, help="images for smallcnn at 32")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="encode's batch_size (default: encode's own default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    cases = [
        ("resnet18 224x224", TorchvisionEncoder("resnet18", input_size=224, seed=args.seed),
         torch.rand(args.n224, 3, 224, 224, generator=g)),
        ("smallcnn 32x32", SmallCNN(width=32, input_size=32, in_channels=1, seed=args.seed),
         torch.rand(args.n32, 1, 32, 32, generator=g)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats (median), baseline batch {BASELINE_BATCH}, "
          f"encode batch {args.batch_size or 'default'}")
    rows = [bench(name, enc, imgs, args.repeats, args.batch_size) for name, enc, imgs in cases]
    print()
    print("| case | images | plain loop img/s | encode img/s | ratio | encode s | cache miss s "
          "| cache hit s | hit speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['images']} | {r['baseline']:.1f} | {r['encode']:.1f} | "
              f"{r['ratio']:.2f} | {r['encode_s']:.3f} | {r['miss_s']:.3f} | {r['hit_s']:.4f} | "
              f"{r['hit_speedup']:.0f}x |")


if __name__ == "__main__":
    main()
