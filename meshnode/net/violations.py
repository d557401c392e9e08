"""What peers did wrong, counted by where and kind, and logged with the peer.

A hostile or broken peer must be visible to the operator without flooding the
log: every violation is counted (``meshnode_protocol_violations_total{listener,kind}``),
and logged with its peer and detail at most once a second for each listener and kind,
the next line saying how many were held back (a peer opens thousands of streams a
second, each of which can break a rule).
"""

from __future__ import annotations

import logging
from collections import Counter

import attrs

from meshnode.logs import SampledLog
from meshnode.policy.models import Limits

log = logging.getLogger("meshnode.violations")


class Violations:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._log = SampledLog(log, logging.WARNING)

    def record(self, where: str, kind: str, peer: str, detail: str) -> None:
        self.counts[where, kind] += 1
        self._log.log((where, kind), "%s: %s from %s: %s", where, kind, peer, detail)


@attrs.frozen
class ConnectionRules:
    """What every connection of one listener (or of the upstream pool) is held to."""

    where: str  # "outbound", "inbound" or "upstream": the metric's listener label
    limits: Limits = attrs.field(factory=Limits)
    violations: Violations = attrs.field(factory=Violations)
