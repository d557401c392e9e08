"""Restart crashed actors with exponential backoff, and bound a restart storm.

An actor that raises is logged with its traceback, counted, announced as an
``actor-restarted`` event and started again after a delay that doubles from
``initial_backoff`` up to ``max_backoff``. An actor that then runs for a whole
``storm_window`` is considered recovered and its delay starts over. More than
``storm_limit`` restarts within ``storm_window`` mark the upstream *failed*
(readiness fails for a critical one) while restarts go on at ``max_backoff``;
it is un-marked once its actors have run a whole window without crashing.
Cancellation is never caught: stopping the group stops every actor.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

from meshnode.events import ActorRestarted, EventBus
from meshnode.resilience.core.backoff import RestartBackoff

log = logging.getLogger(__name__)


@attrs.frozen
class RestartPolicy:
    initial_backoff: float = 0.1
    max_backoff: float = 30.0
    storm_limit: int = 5
    storm_window: float = 60.0


class Supervisor:
    def __init__(
        self, upstream: str, bus: EventBus, policy: RestartPolicy = RestartPolicy()
    ) -> None:
        self.upstream = upstream
        self._bus = bus
        self._policy = policy
        self.restarts: dict[str, int] = {}
        self._crashes: deque[float] = deque()
        self._failed_until_calm: float | None = None

    @property
    def failed(self) -> bool:
        """True while the upstream is in a restart storm (cleared after a calm window)."""
        if self._failed_until_calm is None:
            return False
        if trio.current_time() >= self._failed_until_calm:
            self._failed_until_calm = None
            return False
        return True

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` until it returns, restarting it whenever it raises."""
        policy = self._policy
        backoff = RestartBackoff(policy.initial_backoff, policy.max_backoff)
        self.restarts.setdefault(name, 0)
        while True:
            started = trio.current_time()
            try:
                await run()
                return
            except Exception as exc:
                crashed = trio.current_time()
                if crashed - started >= policy.storm_window:
                    backoff.reset()
                delay = backoff.next()
                self.restarts[name] += 1
                storm = self._record_crash(crashed)
                log.exception(
                    "actor %s of upstream %s crashed (restart %d in %gs%s)",
                    name,
                    self.upstream,
                    self.restarts[name],
                    delay,
                    "; upstream marked failed" if storm else "",
                )
                self._bus.publish(
                    ActorRestarted(
                        upstream=self.upstream,
                        actor=name,
                        restarts=self.restarts[name],
                        error=f"{type(exc).__name__}: {exc}",
                        failed=storm,
                    )
                )
            await trio.sleep(policy.max_backoff if self.failed else delay)

    def _record_crash(self, now: float) -> bool:
        window = self._policy.storm_window
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - window:
            self._crashes.popleft()
        if len(self._crashes) > self._policy.storm_limit:
            self._failed_until_calm = now + window
        elif self._failed_until_calm is not None:
            self._failed_until_calm = max(self._failed_until_calm, now + window)
        return self.failed
