"""A token bucket (pure): ``rate`` tokens a second, holding at most ``burst``."""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float, tokens: float = 1.0) -> float:
        """0.0 if the tokens were taken, else the seconds until they would be there."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self.rate

    def give(self, tokens: float) -> None:
        """Add tokens earned some other way than by time (never past ``burst``)."""
        self._tokens = min(self.burst, self._tokens + tokens)

    @property
    def tokens(self) -> float:
        return self._tokens
