"""``metrics()`` in the seed's shape, from the upstream reports the admin API shows.

Both modes read the same source: the embedded client its own upstream groups'
``report()``, the sidecar client the node's ``GET /admin/upstreams`` (which is
those very reports, JSON-encoded). One conversion serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def seed_metrics(name: str, mode: str, reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per instance its load, per service its breaker, and the retry totals.

    ``load_balancer`` is keyed ``service/host:port``; a breaker's ``error_rate`` is
    the failed share (0 to 1) of the calls in its rolling window; ``retry`` counts
    tries: ``successful_retries`` are requests a retry saved, ``success_rate`` their
    share of the requests that were retried at all, ``avg_retry_count`` the retries
    each of those made.
    """
    instances: dict[str, dict[str, Any]] = {}
    breakers: list[dict[str, Any]] = []
    total_requests = attempts = retries = retried = recovered = exhausted = 0
    for service, report in sorted(reports.items()):
        for endpoint in report["endpoints"]:
            instances[f"{service}/{endpoint['address']}"] = {
                "service": service,
                "address": endpoint["address"],
                "health": "ejected" if endpoint["ejected"] else endpoint["health"],
                "active_connections": endpoint["in_flight"],
                "total_requests": endpoint["tries"],
                "failures": endpoint["failures"],
                "latency_ms": endpoint["ewma_latency_ms"],
            }
        breaker = report["breaker"]
        window = breaker.get("window", {"requests": 0, "failures": 0})
        breakers.append(
            {
                "name": service,
                "metrics": {
                    "current_state": breaker["state"],
                    "enabled": breaker["enabled"],
                    "error_rate": window["failures"] / window["requests"]
                    if window["requests"]
                    else 0.0,
                    "total_requests": breaker.get("total_requests", 0),
                    "failed_requests": breaker.get("total_failures", 0),
                    "rejected_requests": breaker.get("rejected_requests", 0),
                },
            }
        )
        total_requests += sum(report["requests"].values())
        tries = report["tries"]
        attempts += tries["total"]
        retried += tries["retried_requests"]
        recovered += tries["recovered"]
        retries += report["retries"]["retried"]
        exhausted += report["retries"]["exhausted"]
    return {
        "client": name,
        "mode": mode,
        "load_balancer": instances,
        "circuit_breakers": breakers,
        "retry": {
            "total_requests": total_requests,
            "total_attempts": attempts,
            "retried_requests": retried,
            "successful_retries": recovered,
            "failed_retries": exhausted,
            "success_rate": recovered / retried if retried else None,
            "avg_retry_count": retries / retried if retried else 0.0,
        },
    }
