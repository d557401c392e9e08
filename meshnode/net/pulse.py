"""``Pulse``: wake the tasks waiting now, and only them.

A connection wakes its senders when window opens or its queue drains, a stream
at a time, several times a request; mostly nobody waits. The usual way with a
``trio.Event`` (set it, then put a new one in its place, since an Event stays
set) built an Event per wake: a Pulse counts its waiters and does nothing when
there are none.
"""

from __future__ import annotations

import trio


class Pulse:
    __slots__ = ("_event", "_waiting")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiting = 0

    def fire(self) -> None:
        """Wake every task waiting now; with none waiting, nothing happens (a later
        ``wait`` waits for the next fire)."""
        if self._waiting:
            self._event.set()
            self._event = trio.Event()

    async def wait(self) -> None:
        """Until the next ``fire``."""
        self._waiting += 1
        try:
            await self._event.wait()
        finally:
            self._waiting -= 1
