"""The pick (pure): room, then stickiness, then the strategy, for the node's endpoints and
the library's ``LoadBalancer`` alike.

    candidates --(in flight < limit)--> free --(not the endpoint a retry avoids)-->
        the session's endpoint, if it is among them --else--> the strategy's choice,
        which the session then sticks to

Health and ejection are the caller's to filter first: the node has active checks and
outlier detection, the library has the instances its caller offers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from meshnode.resilience.core.balancing import Load, Strategy
from meshnode.resilience.core.outlier import SessionTable

T = TypeVar("T")


def pick(
    candidates: Sequence[T],
    key: Callable[[T], Hashable],
    load: Load,
    strategy: Strategy,
    *,
    now: float,
    limit: int | None = None,
    sessions: SessionTable | None = None,
    session: bytes | None = None,
    client: bytes | None = None,
    avoid: Hashable | None = None,
) -> T | None:
    """One of ``candidates``, or None when none has room (fewer than ``limit`` in flight).

    ``session``: the caller's affinity key, kept in ``sessions``; ``client``: what
    ip-hash hashes; ``avoid``: the key a retry should not go back to, if it can help it.
    """
    free = (
        candidates if limit is None else [c for c in candidates if load.in_flight(key(c)) < limit]
    )
    if not free:
        return None
    if avoid is not None and len(free) > 1:
        free = [c for c in free if key(c) != avoid] or free
    if sessions is not None and session is not None:
        sticky = sessions.get(session, now)
        for candidate in free:
            if key(candidate) == sticky:
                return candidate
    chosen = strategy.pick(free, key, load, client, retry=avoid is not None)
    if sessions is not None and session is not None:
        sessions.stick(session, key(chosen), now)
    return chosen
