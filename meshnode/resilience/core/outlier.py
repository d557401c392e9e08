"""Passive outlier detection (pure): eject an endpoint that keeps failing, for a while.

``consecutive_failures`` failures in a row eject an endpoint for
``base_ejection_time`` x the number of times it has been ejected, capped by
``max_ejection_time``, with +-10 % jitter so ejected endpoints do not all come
back at once. At most ``max_ejection_percent`` of the endpoints are ejected at
a time, but one endpoint can always be ejected. An endpoint that stays clean for
``max_ejection_time`` after coming back starts counting its ejections afresh.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable

import attrs

from meshnode.resilience.core.lru import LRU

JITTER = 0.1


@attrs.define
class _Record:
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float = -math.inf


class OutlierDetector:
    def __init__(
        self,
        consecutive_failures: int,
        base_ejection_time: float,
        max_ejection_time: float,
        max_ejection_percent: float,
        rng: random.Random,
    ) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_percent = max_ejection_percent
        self._rng = rng
        self._records: dict[Hashable, _Record] = {}
        self._last_ejection_ends = 0.0  # no endpoint is ejected from then on

    def record(self, key: Hashable, *, failed: bool, now: float, endpoints: int) -> float | None:
        """Count an outcome; the ejection's length in seconds if this one ejected it."""
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
        if not failed:
            record.consecutive = 0
            if record.ejections and now - record.ejected_until > self.max_ejection_time:
                record.ejections = 0
            return None
        record.consecutive += 1
        if record.consecutive < self.consecutive_failures or now < record.ejected_until:
            return None
        allowed = max(1, math.floor(endpoints * self.max_ejection_percent / 100))
        if self.ejected_count(now) >= allowed:
            return None
        record.consecutive = 0
        record.ejections += 1
        duration = min(self.base_ejection_time * record.ejections, self.max_ejection_time)
        duration *= 1 + self._rng.uniform(-JITTER, JITTER)
        record.ejected_until = now + duration
        self._last_ejection_ends = max(self._last_ejection_ends, record.ejected_until)
        return duration

    def any_ejected(self, now: float) -> bool:
        """Whether an endpoint may be ejected now (a cheap test every try makes first)."""
        return now < self._last_ejection_ends

    def ejected(self, key: Hashable, now: float) -> bool:
        record = self._records.get(key)
        return record is not None and now < record.ejected_until

    def ejected_count(self, now: float) -> int:
        return sum(1 for record in self._records.values() if now < record.ejected_until)

    def ejections(self, key: Hashable) -> int:
        record = self._records.get(key)
        return record.ejections if record is not None else 0

    def forget_except(self, keys: set[Hashable]) -> None:
        """Drop the records of endpoints that discovery no longer lists."""
        self._records = {k: r for k, r in self._records.items() if k in keys}


class SessionTable:
    """Client -> endpoint stickiness: bounded, least recently used forgotten first, with a TTL."""

    def __init__(self, ttl: float, max_sessions: int) -> None:
        self.ttl = ttl
        self._sessions: LRU[bytes, tuple[Hashable, float]] = LRU(max_sessions)

    def get(self, client: bytes, now: float) -> Hashable | None:
        found = self._sessions.get(client)
        if found is None:
            return None
        key, expires = found
        if now >= expires:
            self._sessions.pop(client)
            return None
        return key

    def stick(self, client: bytes, key: Hashable, now: float) -> None:
        self._sessions.put(client, (key, now + self.ttl))

    def forget(self, client: bytes) -> int:
        return 0 if self._sessions.pop(client) is None else 1

    def __len__(self) -> int:
        return len(self._sessions)
