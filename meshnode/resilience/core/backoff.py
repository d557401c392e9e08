"""Retry delays (pure): the seed's four strategies, a cap, and jitter.

For an initial delay of 100 ms and multiplier 2, attempts 1..6 wait:
exponential 100, 200, 400, 800, 1600, 3200; linear 100, 200, ..., 600;
fibonacci 100, 100, 200, 300, 500, 800; constant 100 throughout.
"""

from __future__ import annotations

import random
from typing import Literal

Strategy = Literal["exponential", "linear", "fibonacci", "constant"]


def base_delay(attempt: int, strategy: Strategy, initial: float, multiplier: float = 2.0) -> float:
    """The delay before retry number ``attempt`` (1 for the first retry), before cap and jitter."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    if strategy == "exponential":
        return float(initial * multiplier ** (attempt - 1))
    if strategy == "linear":
        return initial * attempt
    if strategy == "fibonacci":
        previous, current = 0, 1
        for _ in range(attempt - 1):
            previous, current = current, previous + current
        return initial * current
    return initial


def delay(
    attempt: int,
    strategy: Strategy,
    initial: float,
    max_delay: float,
    *,
    multiplier: float = 2.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Capped and jittered: within ``[d*(1-jitter), min(max_delay, d*(1+jitter))]``."""
    capped = min(base_delay(attempt, strategy, initial, multiplier), max_delay)
    if not jitter:
        return capped
    spread = (rng or random).uniform(-jitter, jitter)
    return min(max_delay, capped * (1 + spread))


class RestartBackoff:
    """How long to wait before starting again what stopped or failed: ``initial``, then
    doubling up to ``maximum`` (jittered if asked), until ``reset`` says it went well.
    Actors' supervisor, the workers' parent and the discovery runner each hold one."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng
        self.failures = 0  # in a row, since the last reset

    def next(self) -> float:
        """Count one more failure; the wait before the next start."""
        self.failures += 1
        return delay(
            self.failures,
            "exponential",
            self.initial,
            self.maximum,
            jitter=self.jitter,
            rng=self._rng,
        )

    def reset(self) -> None:
        """What ran went well (long enough, or it answered): start over at ``initial``."""
        self.failures = 0
