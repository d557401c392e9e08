"""One rule for every duration the library takes, the policy files' own.

A duration is a string with a unit (``"100ms"``, ``"5s"``, ``"5m"``), a
``datetime.timedelta``, or a number of seconds, as in trio, asyncio and httpx. The seed
writes milliseconds as bare numbers (``timeout: 10000``); ported as they are, they would
mean hours. So a bare number above what the parameter can sensibly mean in seconds (an
hour, unless the parameter says otherwise) is refused, with the two ways to write it:
``timeout=10000 is 2.8 hours; write "10000ms", or 10.0 for seconds``.
"""

from __future__ import annotations

import datetime

from meshnode.policy.units import Duration

DurationLike = str | float | datetime.timedelta
BARE_SECONDS_LIMIT = 3600.0  # a bare number above this is a millisecond mistake


def seconds(value: DurationLike, name: str, *, limit: float = BARE_SECONDS_LIMIT) -> float:
    """``value`` in seconds, or ``ValueError`` naming ``name`` and how to write it."""
    if isinstance(value, str):
        try:
            return float(Duration.parse(value))
        except ValueError:
            raise ValueError(f'{name}={value!r}: write a duration like "100ms" or "5s"') from None
    if isinstance(value, datetime.timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
        if result > limit:
            raise ValueError(
                f"{name}={value:g} is {_spoken(result)}: a bare number is seconds; write "
                f'"{value:g}ms" for milliseconds, or {result / 1000:g} for seconds'
            )
    else:
        raise TypeError(f"{name}={value!r}: expected seconds, a timedelta or a string like '5s'")
    if result < 0:
        raise ValueError(f"{name}={value!r} is negative")
    return result


def optional_seconds(
    value: DurationLike | None, name: str, *, limit: float = BARE_SECONDS_LIMIT
) -> float | None:
    return None if value is None else seconds(value, name, limit=limit)


def _spoken(value: float) -> str:
    if value >= 86400:
        return f"{value / 86400:.1f} days"
    return f"{value / 3600:.1f} hours"
