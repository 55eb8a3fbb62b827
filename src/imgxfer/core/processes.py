"""Which process of a run this is, from the variables the launchers (torchrun,
accelerate launch) set: the one place that decides who is the main process. It imports
no torch, so the command line can ask before anything heavy is loaded."""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes in this run (the launchers set ``WORLD_SIZE``; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """The process that writes run folders and speaks on the terminal (rank 0)."""
    return rank() == 0
