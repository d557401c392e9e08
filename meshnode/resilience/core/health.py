"""Node health as the seed's HealthCheckManager reports it: liveness, readiness, both."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

CheckType = Literal["liveness", "readiness"]


@attrs.frozen
class CheckResult:
    name: str
    type: CheckType
    critical: bool
    healthy: bool
    message: str
    degraded: bool = False  # passing, with less than full capacity (the seed's "degraded")
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def status(self) -> str:
        if not self.healthy:
            return "unhealthy"
        return "degraded" if self.degraded else "healthy"


def health_report(results: Iterable[CheckResult], kind: CheckType | None) -> tuple[int, Any]:
    """HTTP status and body for ``/health/live`` (kind liveness), ``/health/ready``, ``/health``.

    Only critical checks decide whether the answer is 503 ("unhealthy"); a degraded check
    makes it "degraded", still 200 (the instance serves), as a failing non-critical one
    is reported on its own line. A check's metadata is in its line when it has any.
    """
    now = datetime.now(UTC).isoformat()
    chosen = [result for result in results if kind is None or result.type == kind]
    healthy = all(result.healthy for result in chosen if result.critical)
    degraded = any(result.degraded and result.healthy for result in chosen)
    checks = []
    for result in chosen:
        line: dict[str, Any] = {
            "name": result.name,
            "type": result.type,
            "critical": result.critical,
            "status": result.status,
            "message": result.message,
            "timestamp": now,
        }
        if result.metadata:
            line["metadata"] = result.metadata
        checks.append(line)
    status = "unhealthy" if not healthy else "degraded" if degraded else "healthy"
    return (200 if healthy else 503), {"status": status, "checks": checks}
