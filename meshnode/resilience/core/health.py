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


def health_report(results: Iterable[CheckResult], kind: CheckType | None) -> tuple[int, Any]:
    """HTTP status and body for ``/health/live`` (kind liveness), ``/health/ready``, ``/health``.

    Only critical checks decide the status; the others are reported.
    """
    now = datetime.now(UTC).isoformat()
    chosen = [result for result in results if kind is None or result.type == kind]
    healthy = all(result.healthy for result in chosen if result.critical)
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "checks": [
            {
                "name": result.name,
                "type": result.type,
                "critical": result.critical,
                "status": "healthy" if result.healthy else "unhealthy",
                "message": result.message,
                "timestamp": now,
            }
            for result in chosen
        ],
    }
    return (200 if healthy else 503), body
