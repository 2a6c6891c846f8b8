"""Measurement schedules: which training steps the force probe measures."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EveryK:
    """Measure at steps ``start, start + k, start + 2k, …``.

    Args:
        k: interval in steps, ``k ≥ 1`` (``k = 1`` measures every step).
        start: first measured step.
    """

    k: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"measurement interval k must be an integer >= 1, got {self.k!r}")
        if self.start < 0:
            raise ValueError(f"start step must be >= 0, got {self.start}")

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.k == 0


@dataclass(frozen=True)
class LogSpaced:
    """Measure at about ``per_decade`` steps per decade: dense early, sparse late.

    Step 0 is always measured; step ``t ≥ 1`` is measured when ``⌊per_decade·log10(t)⌋`` differs
    from its value at ``t − 1``.
    """

    per_decade: int = 10

    def __post_init__(self) -> None:
        if self.per_decade < 1:
            raise ValueError(f"per_decade must be >= 1, got {self.per_decade}")

    def __call__(self, step: int) -> bool:
        if step <= 1:
            return True
        current = math.floor(self.per_decade * math.log10(step))
        previous = math.floor(self.per_decade * math.log10(step - 1))
        return current != previous


def as_schedule(schedule: "int | EveryK | LogSpaced"):
    """Turn an integer ``k`` into ``EveryK(k)``; return schedule objects unchanged."""
    if isinstance(schedule, bool):
        raise ValueError(f"schedule must be an integer k >= 1 or a schedule object, got {schedule!r}")
    if isinstance(schedule, int):
        return EveryK(schedule)
    if callable(schedule):
        return schedule
    raise ValueError(f"schedule must be an integer k >= 1 or a schedule object, got {schedule!r}")
