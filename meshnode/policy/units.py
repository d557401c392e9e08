"""Value types that policy files spell as strings: durations, addresses, sizes, and a
delay given as a duration or as a latency percentile.

Parsing lives here, apart from the converter, so the error texts users see are
written once and tested directly.
"""

from __future__ import annotations

import re

import attrs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")
_UNIT_SECONDS = {"us": 0.000001, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """Seconds, written in policy files as a string with a unit ("50us", "250ms", "3s", "5m",
    "1h")."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return cls(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        raise ValueError(f'expected a duration like "30s", got {value!r}')

    def __str__(self) -> str:
        """The shortest way a policy file would write it: "50us", "250ms", "3s", "5m", "1h"."""
        seconds = float(self)
        if 0 < seconds < 0.001:
            return f"{round(seconds * 1e6, 3):g}us"
        if 0 < seconds < 1:
            return f"{seconds * 1000:g}ms"
        if seconds and seconds % 3600 == 0:
            return f"{seconds / 3600:g}h"
        if seconds and seconds % 60 == 0:
            return f"{seconds / 60:g}m"
        return f"{seconds:g}s"

    def __repr__(self) -> str:
        return f"Duration({self})"


_PERCENTILE = re.compile(r"^\s*p(\d+(?:\.\d+)?)\s*$")


@attrs.frozen
class LatencyDelay:
    """A delay written as a duration ("50ms") or as a percentile of recent latencies
    ("p95": as long as 95 % of recent answers took). One of the two is set."""

    seconds: float | None = None
    percentile: float | None = None

    @classmethod
    def parse(cls, value: object) -> LatencyDelay:
        if isinstance(value, str):
            match = _PERCENTILE.match(value)
            if match:
                return cls(percentile=float(match.group(1)))
            if _DURATION.match(value):
                return cls(seconds=float(Duration.parse(value)))
        raise ValueError(
            f'expected a duration like "50ms" or a percentile like "p95", got {value!r}'
        )

    def __str__(self) -> str:
        if self.percentile is not None:
            return f"p{self.percentile:g}"
        return str(Duration(self.seconds or 0.0))


@attrs.frozen(cache_hash=True)
class Address:
    """A host and port, written "host:port" ("[::1]:8080" for IPv6).

    Its hash is cached: an address keys the load, health and ejection tables
    that every try consults.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, value: object) -> Address:
        if not isinstance(value, str):
            raise ValueError(f'expected an address like "127.0.0.1:8080", got {value!r}')
        host, sep, port_text = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f'expected an address like "127.0.0.1:8080", got {value!r}')
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)\s*$")
_UNIT_BYTES = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


class Size(int):
    """Bytes, written in policy files as a string with a unit ("64KiB", "1MiB", "512B")."""

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, str):
            match = _SIZE.match(value)
            if match:
                return cls(int(match.group(1)) * _UNIT_BYTES[match.group(2)])
        raise ValueError(f'expected a size like "64KiB", got {value!r}')

    def __str__(self) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if self and self % _UNIT_BYTES[unit] == 0:
                return f"{self // _UNIT_BYTES[unit]}{unit}"
        return f"{int(self)}B"

    def __repr__(self) -> str:
        return f"Size({self})"
