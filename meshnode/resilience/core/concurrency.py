"""Adaptive concurrency limits (pure): how many calls an upstream may have in flight, found
from its latency, as Netflix's concurrency-limits library finds it
(https://github.com/Netflix/concurrency-limits, ``com.netflix.concurrency.limits.limit``).

Each algorithm takes one sample per finished call (its round-trip time, the calls in
flight when it started, whether it was dropped: timed out or refused for overload) and
moves the limit:

- ``vegas`` (``VegasLimit``): from the no-load RTT (the lowest seen) and the call's RTT,
  the queue the upstream holds is ``limit * (1 - rtt_noload / rtt)``. With ``log`` the
  integer log10 of the limit (at least 1): a queue up to ``log`` grows the limit by
  ``beta * log``, one below ``alpha * log`` by ``log``; above ``beta * log`` (or on a
  drop) it shrinks by ``log``. Every ``probe_multiplier`` x limit samples (jittered, x0.5
  to x1) the no-load RTT is measured again, so that a slower upstream is learned. Its
  ``smoothing`` defaults to 1.0 (none), as the library's does.
- ``gradient`` (``GradientLimit``): ``limit * gradient + sqrt(limit)``, where the
  gradient is ``rtt_tolerance * rtt_noload / rtt`` held to [0.5, 1]; a drop halves the
  limit. Every ``probe_interval`` samples (jittered) it probes: the limit falls to its
  queue size and the no-load RTT is measured afresh, so that it never drifts upwards
  under sustained load.
- ``gradient2`` (``Gradient2Limit``): the same gradient, against a long-term average
  RTT (an exponential average over ``long_window`` samples) instead of a no-load one,
  plus a fixed queue size. It follows changes in latency, not an absolute capacity: on
  an upstream that only queues, each rise of the limit raises the RTT and the average
  follows, so under sustained overload the limit creeps up (see docs/adaptive.md).
- ``fixed``: ``initial_limit``, always.

The gradients' decreases are smoothed (``smoothing``, 0.2), as in the library; every limit is held
to [``min_limit``, ``max_limit``]. Calls in flight below half the limit (the caller is
not pushing) never grow it. Time is not read here: the caller measures RTTs.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import attrs

ALGORITHMS = ("gradient2", "gradient", "vegas", "fixed")
DEFAULT_SMOOTHING = {"vegas": 1.0, "gradient": 0.2, "gradient2": 0.2}


@attrs.frozen
class LimitConfig:
    algorithm: str = "gradient"
    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    smoothing: float | None = None  # the weight of a new limit; None: the algorithm's own
    rtt_tolerance: float = 1.5  # gradient, gradient2: RTT growth taken as no queueing
    probe_interval: int = 1000  # gradient: samples between no-load probes (jittered x1-2)
    long_window: int = 600  # gradient2: samples the long-term RTT averages over
    queue_size: int = 4  # gradient2: the queue it allows the upstream
    alpha: float = 3.0  # vegas: grow below alpha * log10(limit) queued
    beta: float = 6.0  # vegas: shrink above beta * log10(limit) queued
    probe_multiplier: int = 30  # vegas: re-measure the no-load RTT every this x limit samples

    def smoothing_for(self, algorithm: str) -> float:
        """``smoothing``, or the library's default for ``algorithm``: 1.0 (none) for
        VegasLimit, 0.2 for GradientLimit and Gradient2Limit."""
        if self.smoothing is not None:
            return self.smoothing
        return DEFAULT_SMOOTHING.get(algorithm, 1.0)


class Algorithm(Protocol):
    limit: float

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None: ...


def make_algorithm(config: LimitConfig, rng: random.Random | None = None) -> Algorithm:
    kinds: dict[str, type[Gradient2 | Gradient | Vegas | Fixed]] = {
        "gradient2": Gradient2,
        "gradient": Gradient,
        "vegas": Vegas,
        "fixed": Fixed,
    }
    if config.algorithm not in kinds:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}")
    return kinds[config.algorithm](config, rng or random.Random())


class _Limit:
    def __init__(self, config: LimitConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.limit = float(config.initial_limit)

    def _settle(self, new: float, floor: float | None = None) -> None:
        """The next limit: decreases smoothed, held to the configured range."""
        config = self.config
        if new < self.limit:
            smoothing = config.smoothing_for(config.algorithm)
            new = self.limit * (1 - smoothing) + new * smoothing
        low = config.min_limit if floor is None else max(config.min_limit, floor)
        self.limit = max(low, min(config.max_limit, new))


class Fixed(_Limit):
    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        """Nothing moves a fixed limit."""


class Gradient(_Limit):
    def __init__(self, config: LimitConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.rtt_noload: float | None = None
        self._until_probe = self._next_probe()

    def _next_probe(self) -> int:
        return int(self.config.probe_interval * (1 + self.rng.random()))

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        config = self.config
        queue = math.sqrt(self.limit)
        self._until_probe -= 1
        if self._until_probe <= 0:
            self._until_probe = self._next_probe()
            self.limit = max(config.min_limit, queue)
            self.rtt_noload = None
            return
        if self.rtt_noload is None or rtt < self.rtt_noload:
            self.rtt_noload = rtt
        if dropped:
            new = self.limit / 2
        elif inflight < self.limit / 2:
            return
        else:
            gradient = max(0.5, min(1.0, config.rtt_tolerance * self.rtt_noload / rtt))
            new = self.limit * gradient + queue
        self._settle(new, floor=queue)


class Gradient2(_Limit):
    def __init__(self, config: LimitConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.long_rtt: float | None = None
        self._samples = 0

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        config = self.config
        self._samples += 1
        if self.long_rtt is None:
            self.long_rtt = rtt
        elif self._samples <= 10:  # warm-up: a plain average of the first samples
            self.long_rtt += (rtt - self.long_rtt) / self._samples
        else:
            self.long_rtt += (rtt - self.long_rtt) * 2 / (config.long_window + 1)
        if self.long_rtt / rtt > 2:  # back from a long overload: let the average fall
            self.long_rtt *= 0.95
        if inflight < self.limit / 2:
            return
        gradient = max(0.5, min(1.0, config.rtt_tolerance * self.long_rtt / rtt))
        self._settle(self.limit * gradient + config.queue_size)


class Vegas(_Limit):
    def __init__(self, config: LimitConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.rtt_noload: float | None = None
        self._samples = 0
        self._jitter = self._next_jitter()

    def _next_jitter(self) -> float:
        return 0.5 + self.rng.random() / 2

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        config = self.config
        self._samples += 1
        if self._samples >= self._jitter * config.probe_multiplier * self.limit:
            self._samples, self._jitter = 0, self._next_jitter()
            self.rtt_noload = rtt
            return
        if self.rtt_noload is None or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return
        log = _log10(self.limit)
        if dropped:
            new = self.limit - log
        elif inflight * 2 < self.limit:
            return
        else:
            queued = math.ceil(self.limit * (1 - self.rtt_noload / rtt))
            if queued <= log:
                new = self.limit + config.beta * log
            elif queued < config.alpha * log:
                new = self.limit + log
            elif queued > config.beta * log:
                new = self.limit - log
            else:
                return
        new = max(config.min_limit, min(config.max_limit, new))
        smoothing = config.smoothing_for("vegas")
        self.limit = (1 - smoothing) * self.limit + smoothing * new


def _log10(limit: float) -> int:
    """The library's ``Log10RootFunction`` below 1,000: the integer log10, at least 1 (it
    switches to a square root from 1,000 on, a jump from 2 to 31 not copied here)."""
    return max(1, int(math.log10(max(1.0, limit))))


class LimiterCore:
    """Admission against an algorithm's limit: ``admit`` before a call, ``finish`` after."""

    def __init__(self, config: LimitConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.algorithm = make_algorithm(config, rng)
        self.inflight = 0

    @property
    def limit(self) -> int:
        return max(1, int(self.algorithm.limit))

    def admit(self) -> int | None:
        """The calls in flight when this one starts (keep it for ``finish``); None when
        the limit is reached (the call must not go)."""
        if self.inflight >= self.limit:
            return None
        self.inflight += 1
        return self.inflight

    def finish(self, started_with: int, rtt: float, *, dropped: bool = False) -> None:
        self.inflight -= 1
        self.algorithm.sample(rtt, started_with, dropped)

    def release(self) -> None:
        """A call that says nothing of the upstream (it never reached it)."""
        self.inflight -= 1
