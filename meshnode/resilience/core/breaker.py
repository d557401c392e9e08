"""Theory of operation: the circuit breaker state machine.

    CLOSED --(failure_threshold consecutive failures, or the failure rate (or
              slow-call rate) over the rolling window reaching its percentage
              once the window holds volume_threshold calls)--> OPEN
    OPEN --(reset_timeout elapsed; seen by ``admit`` or ``poll``)--> HALF_OPEN
    HALF_OPEN --(half_open_max_requests trials all succeed)--> CLOSED
    HALF_OPEN --(any trial fails)--> OPEN

In HALF_OPEN at most ``half_open_max_requests`` trials are in flight at once;
a trial admitted is a ``Permit`` that must be finished with ``record`` exactly
once (a trial that is cancelled or times out is recorded as a failure by its
caller). A permit carries the generation it was issued in, so an outcome from
before the last transition cannot move the new state. An operator override
(forced open or closed) wins over everything until set back to auto.

The rolling window is ``BUCKETS`` time buckets, so its cost is constant
whatever the request rate. Which buckets the window holds changes only as the clock
enters the next bucket's time: the window's totals are summed from the buckets once
then, and kept up to date with each call in between (every call is judged against them).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

BUCKETS = 10


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    @property
    def gauge(self) -> int:
        """The value SPEC's ``meshnode_breaker_state`` gauge shows."""
        return {"closed": 0, "open": 1, "half-open": 2}[self.value]


class Override(enum.Enum):
    AUTO = "auto"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class BreakerConfig:
    failure_threshold: int = 5
    failure_threshold_percentage: float = 50.0
    volume_threshold: int = 10
    window: float = 10.0
    reset_timeout: float = 30.0
    half_open_max_requests: int = 3
    slow_call_duration: float | None = None
    slow_call_rate_percentage: float = 100.0


@attrs.frozen
class Permit:
    generation: int
    trial: bool


@attrs.frozen
class Transition:
    previous: BreakerState
    current: BreakerState
    reason: str


@attrs.define
class _Bucket:
    start: float = 0.0
    calls: int = 0
    failures: int = 0
    slow: int = 0


class BreakerCore:
    def __init__(
        self,
        config: BreakerConfig,
        now: float,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self.override = Override.AUTO
        self.state_since = now
        self.generation = 0
        self.consecutive_failures = 0
        self.trials_in_flight = 0
        self.trial_successes = 0
        self.total_calls = 0
        self.total_failures = 0
        self.rejected = 0
        self._on_transition = on_transition
        self._buckets = [_Bucket() for _ in range(BUCKETS)]
        # The window's calls, failures and slow calls, as summed for the bucket time
        # ``_summed_at`` (None: to be summed again).
        self._summed_at: int | None = None
        self._sums = [0, 0, 0]

    # -- admission ----------------------------------------------------------

    def admit(self, now: float) -> Permit | None:
        """A permit to call, or None: the caller fails fast without calling."""
        if self.override is Override.OPEN:
            self.rejected += 1
            return None
        if self.override is Override.CLOSED:
            return Permit(self.generation, trial=False)
        self.poll(now)
        if self.state is BreakerState.CLOSED:
            return Permit(self.generation, trial=False)
        if (
            self.state is BreakerState.HALF_OPEN
            and self.trials_in_flight + self.trial_successes < self.config.half_open_max_requests
        ):
            self.trials_in_flight += 1
            return Permit(self.generation, trial=True)
        self.rejected += 1
        return None

    def poll(self, now: float) -> None:
        """Move OPEN to HALF_OPEN once ``reset_timeout`` has passed."""
        if self.state is BreakerState.OPEN and now - self.state_since >= self.config.reset_timeout:
            self._move(BreakerState.HALF_OPEN, now, "reset timeout elapsed")

    def next_deadline(self) -> float | None:
        """When ``poll`` would next change something on its own, if ever."""
        if self.state is BreakerState.OPEN and self.override is Override.AUTO:
            return self.state_since + self.config.reset_timeout
        return None

    # -- outcomes -----------------------------------------------------------

    def record(self, permit: Permit, *, failed: bool, duration: float, now: float) -> None:
        self.total_calls += 1
        self.total_failures += failed
        if permit.trial and permit.generation == self.generation:
            self.trials_in_flight -= 1
        if permit.generation != self.generation or self.override is not Override.AUTO:
            return  # decided under an earlier state: counted, but moves nothing
        if self.state is BreakerState.HALF_OPEN:
            if failed:
                self._move(BreakerState.OPEN, now, "a trial request failed")
            else:
                self.trial_successes += 1
                if self.trial_successes >= self.config.half_open_max_requests:
                    self._move(BreakerState.CLOSED, now, "every trial request succeeded")
            return
        slow = (
            self.config.slow_call_duration is not None
            and duration >= self.config.slow_call_duration
        )
        bucket = self._bucket(now)
        sums = self._window_sums(now)
        bucket.calls += 1
        bucket.failures += failed
        bucket.slow += slow
        sums[0] += 1
        sums[1] += failed
        sums[2] += slow
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        reason = self._trip_reason(sums)
        if reason is not None:
            self._move(BreakerState.OPEN, now, reason)

    def release(self, permit: Permit) -> None:
        """Give a permit back without an outcome (the caller went away): frees a trial slot."""
        if permit.trial and permit.generation == self.generation:
            self.trials_in_flight -= 1

    def _trip_reason(self, sums: list[int]) -> str | None:
        config = self.config
        if self.consecutive_failures >= config.failure_threshold:
            return f"{self.consecutive_failures} consecutive failures"
        calls, failures, slow = sums
        if calls < config.volume_threshold:
            return None
        if failures * 100 >= config.failure_threshold_percentage * calls:
            return f"error rate {failures * 100 / calls:.0f}% over {calls} requests"
        if config.slow_call_duration is not None and slow * 100 >= (
            config.slow_call_rate_percentage * calls
        ):
            return f"slow-call rate {slow * 100 / calls:.0f}% over {calls} requests"
        return None

    def window_counts(self, now: float) -> tuple[int, int, int]:
        """Calls, failures and slow calls in the window that ends at ``now``."""
        calls, failures, slow = self._window_sums(now)
        return calls, failures, slow

    def _window_sums(self, now: float) -> list[int]:
        """The window's totals at ``now``, summed from the buckets when ``now`` is in another
        bucket's time than when they were last summed (the buckets it holds are the same
        throughout one bucket's time)."""
        width = self.config.window / BUCKETS
        at = int(now // width)
        if at == self._summed_at:
            return self._sums
        horizon = now - self.config.window
        calls = failures = slow = 0
        for bucket in self._buckets:
            if bucket.start > horizon:
                calls += bucket.calls
                failures += bucket.failures
                slow += bucket.slow
        self._summed_at, self._sums = at, [calls, failures, slow]
        return self._sums

    def _bucket(self, now: float) -> _Bucket:
        width = self.config.window / BUCKETS
        start = now - now % width
        bucket = self._buckets[int(now // width) % BUCKETS]
        if bucket.start != start:
            bucket.start, bucket.calls, bucket.failures, bucket.slow = start, 0, 0, 0
        return bucket

    # -- operators and reloads ----------------------------------------------

    def force(self, override: Override, now: float) -> None:
        """Operator override; the state shown follows it, and ``AUTO`` resumes closed."""
        if override is self.override:
            return
        self.override = override
        target = {
            Override.OPEN: BreakerState.OPEN,
            Override.CLOSED: BreakerState.CLOSED,
            Override.AUTO: BreakerState.CLOSED,
        }[override]
        self._move(target, now, f"operator set {override.value}")

    def reconfigure(self, config: BreakerConfig) -> None:
        """New thresholds apply from now on; state and counts are kept."""
        self.config = config
        self._summed_at = None  # the window's buckets may be of another width now

    def error_rate(self, now: float) -> float:
        calls, failures, _ = self.window_counts(now)
        return failures / calls if calls else 0.0

    def _move(self, state: BreakerState, now: float, reason: str) -> None:
        previous = self.state
        self.generation += 1
        self.state = state
        self.state_since = now
        self.trials_in_flight = 0
        self.trial_successes = 0
        self.consecutive_failures = 0
        if state is BreakerState.CLOSED:
            for bucket in self._buckets:
                bucket.calls = bucket.failures = bucket.slow = 0
            self._sums = [0, 0, 0]
        if previous is not state and self._on_transition is not None:
            self._on_transition(Transition(previous, state, reason))
