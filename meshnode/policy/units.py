"""Value types that policy files spell as strings: durations and addresses.

Parsing lives here, apart from the converter, so the error texts users see are
written once and tested directly.
"""

from __future__ import annotations

import re

import attrs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """Seconds, written in policy files as a string with a unit ("250ms", "3s", "5m", "1h")."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return cls(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        raise ValueError(f'expected a duration like "30s", got {value!r}')

    def __str__(self) -> str:
        """The shortest way a policy file would write it: "250ms", "3s", "5m", "1h"."""
        seconds = float(self)
        if 0 < seconds < 1:
            return f"{seconds * 1000:g}ms"
        if seconds and seconds % 3600 == 0:
            return f"{seconds / 3600:g}h"
        if seconds and seconds % 60 == 0:
            return f"{seconds / 60:g}m"
        return f"{seconds:g}s"

    def __repr__(self) -> str:
        return f"Duration({self})"


@attrs.frozen
class Address:
    """A host and port, written "host:port" ("[::1]:8080" for IPv6)."""

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
