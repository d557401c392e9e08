"""Immutable views that actors publish and the request path reads without waiting."""

from __future__ import annotations

import enum

import attrs

from meshnode.policy.models import Endpoint


@attrs.frozen
class EndpointSet:
    """The endpoints requests may go to, as the balancer last published them."""

    endpoints: tuple[Endpoint, ...]
    version: int = 0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@attrs.frozen
class BreakerStatistics:
    state: BreakerState
    successes: int
    failures: int
    outcomes_dropped: int  # outcomes the request path could not queue (inbox full)
