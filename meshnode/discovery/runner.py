"""Running a discovery source for ever, without letting the registry take traffic down.

* A registry that fails (unreachable, an error status, garbage) leaves the last
  known endpoints in place: the state turns ``stale`` (shown in
  ``/admin/upstreams`` and as a non-critical readiness check) and the source is
  started again after an exponential backoff (1 s doubling to 30 s, +-20 %).
* An answer whose entries were all malformed counts as garbage, not as "no
  endpoints". An answer that is validly empty is applied: the registry says
  the service has no instances.
* Flapping answers are debounced: a new set is published at once, and then at
  most once per ``debounce`` seconds, the latest set winning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from meshnode.discovery.source import DiscoveryError, Source
from meshnode.policy.models import Endpoint
from meshnode.resilience.core.backoff import RestartBackoff

log = logging.getLogger(__name__)

RETRY_INITIAL = 1.0
RETRY_MAX = 30.0
RETRY_JITTER = 0.2
DEBOUNCE = 1.0

Publish = Callable[[tuple[Endpoint, ...]], Awaitable[None]]


@attrs.define
class DiscoveryState:
    """What ``/admin/upstreams`` says about an upstream's discovery."""

    backend: str
    source: str
    stale: bool = False
    last_update: float | None = None  # wall-clock time of the last good answer
    last_error: str | None = None
    failures: int = 0  # in a row, since the last good answer

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class _Debouncer:
    """Publishes the latest endpoint set at once, then at most once per ``interval``."""

    def __init__(self, publish: Publish, interval: float) -> None:
        self._publish = publish
        self._interval = interval
        self._latest: tuple[Endpoint, ...] | None = None
        self._offered = trio.Event()

    def offer(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._latest = endpoints
        self._offered.set()

    async def run(self) -> None:
        while True:
            await self._offered.wait()
            self._offered = trio.Event()
            endpoints, self._latest = self._latest, None
            assert endpoints is not None
            await self._publish(endpoints)
            await trio.sleep(self._interval)


async def keep_discovering(
    source: Source,
    publish: Publish,
    state: DiscoveryState,
    *,
    debounce: float = DEBOUNCE,
) -> None:
    """Run ``source`` for ever, publishing what it finds; see the module docstring."""
    debouncer = _Debouncer(publish, debounce)
    backoff = RestartBackoff(RETRY_INITIAL, RETRY_MAX, jitter=RETRY_JITTER)

    def found(endpoints: Sequence[Endpoint]) -> None:
        backoff.reset()
        state.stale, state.failures, state.last_error = False, 0, None
        state.last_update = time.time()
        debouncer.offer(tuple(endpoints))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(debouncer.run)
        while True:
            try:
                await source.watch(found)
            except Exception as exc:  # a registry failure of any shape: keep what we have
                state.failures += 1
                state.stale = True
                state.last_error = _describe(exc)
                wait = backoff.next()
                log.warning(
                    "discovery %s failed (%d in a row), keeping the last endpoints; "
                    "retrying in %.1fs: %s",
                    source.description,
                    state.failures,
                    wait,
                    state.last_error,
                    exc_info=not isinstance(exc, (DiscoveryError, OSError)),
                )
                await trio.sleep(wait)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, DiscoveryError) else f"{type(exc).__name__}: {text}"
