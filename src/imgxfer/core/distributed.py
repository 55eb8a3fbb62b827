"""Data-parallel runs and mixed precision through Hugging Face Accelerate.

``accelerate launch -m imgxfer run ...`` or ``torchrun --nproc-per-node N -m imgxfer
run ...`` starts N processes; each builds the same plan (same seed: same split, same
initial weights) and trains on its own batches (every index stream is seeded with the
process's rank), and after each backward pass :func:`backward_step` averages the
gradients over the processes before the optimiser step, so the weights stay equal
everywhere. :func:`sync_buffers` averages BatchNorm statistics at the end of each
training loop. Only the main process (rank 0) writes the run folder; the others write
into a private temporary folder that is removed at exit (:func:`private_folder`).

Why gradients are averaged explicitly rather than by wrapping models in
``DistributedDataParallel`` (``accelerator.prepare``): imgxfer's adapters forward each
domain's batch separately through the encoder (domain-specific BatchNorm,
imgxfer.components.adapters.common) and the GAN's discriminator sees real and generated batches in
two forwards per step; DDP's reducer expects one forward of the wrapped module per
backward. Averaging after ``backward`` is what DDP computes, without overlapping the
communication with the backward pass (a cost that matters for large models on many
GPUs, not for the CPU/gloo runs tested here).

Accelerate provides the process group (gloo on CPU, NCCL on GPUs), each process's
device, the collective ``reduce`` and ``autocast`` for ``--mixed-precision bf16``.
A single process without mixed precision never imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgxfer.core.errors import UserError, one_line

# Which process this is: read from the launcher's variables, without torch.
from imgxfer.core.processes import is_main as is_main
from imgxfer.core.processes import rank as rank
from imgxfer.core.processes import world_size as world_size

_accelerator: Any = None


def setup(device: str, mixed_precision: str = "no") -> torch.device | None:
    """Start Accelerate when several processes run or mixed precision is asked for, and
    return this process's device (``None``: not started, choose as usual)."""
    global _accelerator  # mixed_precision: checked by RunConfig.validate
    if world_size() == 1 and mixed_precision == "no":
        _accelerator = None
        return None
    if _accelerator is None:
        try:
            from accelerate import Accelerator
        except ImportError:
            raise UserError("several processes or mixed precision need Hugging Face "
                            "Accelerate: pip install accelerate.") from None
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if not cpu and local > torch.cuda.device_count():
            raise UserError(f"{local} processes were launched on this machine but it has "
                            f"{torch.cuda.device_count()} GPU(s); launch at most one process "
                            "per GPU (--nproc-per-node, accelerate's --num_processes) or "
                            "run with --device cpu.")
        try:
            _accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"could not start {world_size()} processes on "
                            f"{'the CPU' if cpu else 'the GPUs'}: {one_line(exc)}") from None
    chosen: torch.device = _accelerator.device
    return torch.device("cpu") if chosen.type == "cpu" else chosen  # not "cpu:0"


def describe() -> dict[str, Any]:
    """metrics.json's ``distributed`` entry ({} for a plain single-process run)."""
    if _accelerator is None:
        return {}
    return {"world_size": world_size(), "mixed_precision": str(_accelerator.mixed_precision),
            "backend": str(_accelerator.distributed_type.value)}


def seed_offset() -> int:
    """Added to the seeds of batch streams: each process draws its own batches."""
    return 1_000_003 * rank()


def autocast() -> contextlib.AbstractContextManager[None]:
    """Mixed precision for forward passes when asked (bf16), else nothing."""
    return _accelerator.autocast() if _accelerator is not None else contextlib.nullcontext()


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the processes (one all-reduce of a flat
    buffer). A parameter without a gradient counts as a zero gradient, so every process
    sends buffers of the same size."""
    if world_size() == 1 or _accelerator is None:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """``loss.backward()``, gradients averaged over the processes, ``optimizer.step()``."""
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    average_gradients(p for group in optimizer.param_groups for p in group["params"])
    optimizer.step()


@torch.no_grad()
def sync_buffers(*modules: nn.Module | None) -> None:
    """Average floating-point buffers (BatchNorm's running statistics) over the processes,
    so every process evaluates the same model."""
    if world_size() == 1 or _accelerator is None:
        return
    for module in modules:
        if module is None:
            continue
        for buffer in module.buffers():
            if buffer.is_floating_point():
                buffer.copy_(_accelerator.reduce(buffer.clone(), reduction="mean"))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds in any process (a time budget runs out at slightly different
    moments; all stop at the same step, or the collectives would wait forever)."""
    if world_size() == 1 or _accelerator is None:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_accelerator.device)
    return bool(_accelerator.reduce(value, reduction="sum").item() > 0)


def private_folder() -> Path:
    """A folder for a non-main process's run files, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix=f"imgxfer-rank{rank()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process first (a dataset download), then the others, which find the files."""
    if _accelerator is None or world_size() == 1:
        yield
        return
    with _accelerator.main_process_first():
        yield
