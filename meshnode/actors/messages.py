"""What actors tell each other over their channels. Frozen: a message is a fact or an order.

Discovery sends the whole endpoint set each time (``EndpointsReset``): every backend
knows it whole, and a set that replaces the last one cannot drift from it.
"""

from __future__ import annotations

import attrs

from meshnode.policy.models import Endpoint, UpstreamPolicy


@attrs.frozen
class EndpointsReset:
    """The whole endpoint set, replacing whatever was known."""

    endpoints: tuple[Endpoint, ...]


@attrs.frozen
class PolicyChanged:
    """A reload changed this upstream's policy; each actor takes what concerns it."""

    policy: UpstreamPolicy


@attrs.frozen
class CrashForTest:
    """The test-only fault hook: the receiving actor raises ``InjectedFault``."""

    reason: str = "injected by a test"


class InjectedFault(Exception):
    """Raised by an actor told ``CrashForTest``: a crash the supervisor must heal."""
