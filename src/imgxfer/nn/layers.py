"""What each module of a network outputs in one forward pass: the shapes the explain
module (the layer class-activation maps read) and the dense tasks' feature pyramid (the
stages a head reads) choose layers from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def output_shapes(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape)`` of every submodule of ``model`` that ``run()`` (one
    forward pass, made here in eval mode without gradients; the mode is restored) calls
    exactly once, in the order their outputs are complete. Modules called more than once
    (a ReLU shared inside a ResNet block) are left out: their outputs are ambiguous."""
    calls: dict[str, list[tuple[int, ...]]] = {}
    order: list[str] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: object, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            calls.setdefault(name, []).append(shape)
            order.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run()
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [(name, calls[name][0]) for name in order if len(calls[name]) == 1]
