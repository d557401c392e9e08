"""Immutable views that actors publish and the request path reads without waiting."""

from __future__ import annotations

import attrs

from meshnode.policy.models import Endpoint


@attrs.frozen
class EndpointSet:
    """The endpoints requests may go to, as the balancer last published them."""

    endpoints: tuple[Endpoint, ...]
    version: int = 0
