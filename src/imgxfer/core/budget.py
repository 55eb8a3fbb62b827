"""Training budgets: a number of optimisation steps and/or a wall-clock time."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from imgxfer.core import distributed
from imgxfer.core.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """'90', '90s', '3m', '1.5h' -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
        if not match:
            raise UserError(f"cannot read the duration {text!r}; write it like 90s, 3m or 1h.")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise UserError(f"a time budget must be positive, got {text!r}.")
    return seconds


@dataclass
class Budget:
    """Stop after ``steps`` steps or ``seconds`` seconds, whichever comes first.
    ``steps=None`` is a time-only budget (then ``seconds`` is required); use
    ``total=budget.steps`` for a progress bar (``None`` draws one without an end)."""

    steps: int | None
    seconds: float | None = None
    _start: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise UserError(f"a step budget cannot be negative, got {self.steps}.")
        if self.steps is None and self.seconds is None:
            raise ValueError("a budget needs steps, seconds or both")

    def start(self) -> Budget:
        self._start = time.monotonic()
        return self

    def done(self, step: int) -> bool:
        if self.steps is not None and step >= self.steps:
            return True
        if self.seconds is None:
            return False
        # In a distributed run, all processes stop at the same step (imgxfer.core.distributed).
        return distributed.any_process(time.monotonic() - self._start >= self.seconds)
