"""Recent latencies and their percentiles (pure): what a percentile hedge delay reads.

A hedge "at p95" goes out once a try has waited as long as 95 % of the upstream's recent
answers took (Dean and Barroso, "The Tail at Scale", 2013; Finagle's backup requests).
The last ``size`` latencies are kept in a ring; a percentile is read from a sorted copy,
made again only after ``size / 16`` new latencies, so that reading it on every request
costs a lookup, not a sort. Until ``min_samples`` latencies were seen there is no
percentile (the first few answers say little of a tail).
"""

from __future__ import annotations

import math

DEFAULT_SIZE = 1024
DEFAULT_MIN_SAMPLES = 32


class RecentLatencies:
    __slots__ = ("_next", "_ring", "_size", "_sorted", "_stale", "min_samples")

    def __init__(self, size: int = DEFAULT_SIZE, min_samples: int = DEFAULT_MIN_SAMPLES) -> None:
        self._size = size
        self._ring: list[float] = []
        self._next = 0
        self._sorted: list[float] = []
        self._stale = 0  # latencies recorded since the sorted copy was made
        self.min_samples = min_samples

    def record(self, seconds: float) -> None:
        ring = self._ring
        if len(ring) < self._size:
            ring.append(seconds)
        else:
            ring[self._next] = seconds
            self._next = (self._next + 1) % self._size
        self._stale += 1

    def percentile(self, percent: float) -> float | None:
        """The latency ``percent`` % of the recent ones did not exceed (nearest rank), or
        None while fewer than ``min_samples`` were seen."""
        ring = self._ring
        if len(ring) < self.min_samples:
            return None
        if not self._sorted or self._stale * 16 >= self._size:
            self._sorted = sorted(ring)
            self._stale = 0
        ordered = self._sorted
        rank = max(1, math.ceil(percent / 100 * len(ordered)))
        return ordered[rank - 1]
