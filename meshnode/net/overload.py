"""Overload protection, after Envoy's overload manager: shed new work when under pressure.

Pressure has reasons: ``memory`` (resident memory over ``[limits]
overload_memory``, read from /proc every second) and ``connections:<listener>``
(a listener at ``max_connections``). A listener under pressure stops accepting
(new connections wait in the kernel's backlog instead of costing memory here);
under memory pressure the node also answers new requests 503 ``overloaded``,
and returns freed C heap to the system (glibc ``malloc_trim``) before each
reading, so RSS can fall once the load is gone.
Each change of state is reported once to ``on_change`` (log, event, metric).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

MEMORY = "memory"
POLL_INTERVAL = 1.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class Overload:
    def __init__(
        self,
        memory_limit: int | None = None,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.memory_limit = memory_limit  # swapped on reload
        self.reasons: set[str] = set()
        self.shed = 0  # requests answered 503 because of memory pressure
        self._on_change = on_change
        self._changed = trio.Event()

    @property
    def shedding(self) -> bool:
        return MEMORY in self.reasons

    def set(self, reason: str, active: bool) -> None:
        if active == (reason in self.reasons):
            return
        if active:
            self.reasons.add(reason)
        else:
            self.reasons.discard(reason)
        log.warning("overload %s: %s", reason, "on" if active else "off")
        if self._on_change is not None:
            self._on_change(reason, active)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_room(self, listener_reason: str) -> None:
        """Return once neither memory nor this listener's own reason is active."""
        while MEMORY in self.reasons or listener_reason in self.reasons:
            await self._changed.wait()

    async def watch_memory(self, read: Callable[[], int] = resident_bytes) -> None:
        while True:
            limit = self.memory_limit
            over = limit is not None and read() > limit
            if over:
                # Freed buffers often stay in the C heap and keep RSS up: hand them back
                # before deciding, or the node could stay overloaded after the load is gone.
                _trim_heap()
                over = read() > limit  # type: ignore[operator]
            self.set(MEMORY, over)
            await trio.sleep(POLL_INTERVAL)


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS is taken as it is
