"""What every discovery backend is, and the one that needs no registry (static)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from meshnode.policy.models import Endpoint, StaticDiscovery

Found = Callable[[Sequence[Endpoint]], None]


class DiscoveryError(Exception):
    """The registry could not be asked, or answered something unusable."""


class Source(Protocol):
    description: str  # where the endpoints come from, for logs and /admin/upstreams

    async def watch(self, found: Found) -> None:
        """Call ``found`` with the whole endpoint set each time it may have changed.

        Never returns; raises (``DiscoveryError`` or the client's own errors)
        when the registry fails, and the caller keeps the last set and retries.
        """


class StaticSource:
    def __init__(self, policy: StaticDiscovery) -> None:
        self.description = "static"
        self._endpoints = policy.endpoints

    async def watch(self, found: Found) -> None:
        found(self._endpoints)
        await trio.sleep_forever()
