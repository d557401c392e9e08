"""The log line of an error the node answers itself, at most one a second of each kind.

A node that sheds load answers thousands of requests a second with the same 503 (its
concurrency limit, rate limit, open breaker, full bulkhead): a line for each one cost a
fifth of the node's CPU under such a flood (formatting and writing a log record is about
as dear as the refusal itself), which is the moment the node can least afford it. Each
kind (the mesh reason and the upstream) gets one line a second; the lines held back are
counted on the next one. The counts of every refusal are in ``/metrics`` either way, and
the access log, when on, still has a line per request.
"""

from __future__ import annotations

import logging

import trio

from meshnode.errors import MeshError

log = logging.getLogger("meshnode.proxy.forward")

INTERVAL = 1.0  # seconds between two lines of one kind


class ErrorLog:
    """Which kinds logged when, and how many lines each held back since (bounded: reasons
    are the node's own, upstream names come from the policies)."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str | None], float] = {}
        self._held: dict[tuple[str, str | None], int] = {}

    def answered(self, stream_id: int, error: MeshError) -> None:
        kind = (error.reason, error.upstream)
        now = trio.current_time()
        if now < self._next.get(kind, -1.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + INTERVAL
        held = self._held.pop(kind, 0)
        log.info(
            "stream %d: %s (%s): %s%s",
            stream_id,
            error.reason,
            error.upstream,
            error.detail,
            f" (and {held} more like it since the last such line)" if held else "",
        )
