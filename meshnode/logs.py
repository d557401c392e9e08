"""Logging set-up: human lines (the default) or JSON lines, one object per record; and a
log that keeps floods of one kind of line to one a second."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["human", "json"]


class JSONFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}``, plus an access record's fields as they are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, log_format: LogFormat = "human") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # h2 and hpack log every frame at DEBUG; only meshnode's own debug lines are wanted.
    for chatty in ("h2", "hpack", "hpack.hpack", "hpack.table"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))


class SampledLog:
    """At most one line every ``interval`` seconds of each kind; the next line of a kind
    says how many were held back since the last.

    For what a peer or a flood of callers can make happen thousands of times a second (the
    same refusal, the same protocol violation): formatting and writing a log record costs
    about what the refusal itself does, so a line each would spend the node's CPU when it
    can least afford it, and bury everything else in the log. The counts of every one are
    in ``/metrics`` either way. ``kind`` must come from a bounded set (a reason and an
    upstream or listener name, never a peer's address).
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def log(self, kind: Hashable, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(kind, -math.inf):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        held = self._held.pop(kind, 0)
        if held:
            message += " (and %d more like it since the last such line)"
            args = (*args, held)
        self._logger.log(self._level, message, *args)
