"""What peers did wrong, counted by where and kind, each logged once with the peer.

A hostile or broken peer must be visible to the operator without flooding the
log: every violation ends a stream or a connection, so one line per violation
is bounded by what the peer can open, and the counts feed
``meshnode_protocol_violations_total{listener,kind}``.
"""

from __future__ import annotations

import logging
from collections import Counter

import attrs

from meshnode.policy.models import Limits

log = logging.getLogger("meshnode.violations")


class Violations:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, where: str, kind: str, peer: str, detail: str) -> None:
        self.counts[where, kind] += 1
        log.warning("%s: %s from %s: %s", where, kind, peer, detail)


@attrs.frozen
class ConnectionRules:
    """What every connection of one listener (or of the upstream pool) is held to."""

    where: str  # "outbound", "inbound" or "upstream": the metric's listener label
    limits: Limits = attrs.field(factory=Limits)
    violations: Violations = attrs.field(factory=Violations)
