"""What a library object needs of the ``trio.run`` it is used in, made there on first use.

A breaker's clock and a bucket's refill count from the run's own clock, which exists
only inside ``trio.run``: made on first use, they let a breaker be built at module level,
as pybreaker's and aiobreaker's users hold theirs. One object serves one run at a time:
used from a later run once the first has ended, it starts afresh (closed, full); used
from a second run while the first still runs, it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class PerRun(Generic[T]):
    __slots__ = ("_make", "_owner", "_token", "_value")

    def __init__(self, owner: str, make: Callable[[], T]) -> None:
        self._owner = owner
        self._make = make
        self._token: trio.lowlevel.TrioToken | None = None
        self._value: T | None = None

    def get(self) -> T:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise RuntimeError(f"{self._owner} is used inside trio.run") from None
        if token is not self._token:
            if self._token is not None and _running(self._token):
                raise RuntimeError(f"{self._owner} is in use by another trio.run: make one per run")
            self._token, self._value = token, self._make()
        assert self._value is not None
        return self._value


def _running(token: trio.lowlevel.TrioToken) -> bool:
    try:
        token.run_sync_soon(_nothing)
    except trio.RunFinishedError:
        return False
    return True


def _nothing() -> None:
    """Scheduled only to learn whether a run still takes work."""
