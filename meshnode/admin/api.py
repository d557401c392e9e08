"""The admin API's routes (SPEC section 6), over whatever implements ``NodeControl``.

The admin layer sits below the node, so it sees the node only through this
protocol: reports to serialize and commands to carry out.
"""

from __future__ import annotations

from typing import Any, Protocol

from meshnode.admin.health import CheckResult, CheckType, health_report
from meshnode.admin.http import AdminRequest, AdminResponse, Handler


class ReloadOutcome(Protocol):
    @property
    def applied(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


class NodeControl(Protocol):
    def health_checks(self) -> list[CheckResult]: ...

    def upstreams_report(self) -> dict[str, Any]: ...

    def policies_report(self) -> dict[str, Any]: ...

    async def reload(self, trigger: str) -> ReloadOutcome: ...

    def force_breaker(self, upstream: str, state: str) -> dict[str, Any] | None:
        """Apply an operator override; None if there is no such upstream."""


def admin_routes(node: NodeControl) -> dict[tuple[str, str], Handler]:
    def health(kind: CheckType | None) -> Handler:
        async def answer(_: AdminRequest) -> AdminResponse:
            status, body = health_report(node.health_checks(), kind)
            return AdminResponse.json(status, body)

        return answer

    async def upstreams(_: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, node.upstreams_report())

    async def policies(_: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, node.policies_report())

    async def reload(_: AdminRequest) -> AdminResponse:
        result = await node.reload("admin")
        return AdminResponse.json(200 if result.applied else 422, result.to_json())

    async def breaker(request: AdminRequest) -> AdminResponse:
        state = request.query_value("state")
        if state not in ("open", "closed", "auto"):
            return AdminResponse.json(400, {"error": "state must be open, closed or auto"})
        upstream = request.params["upstream"]
        report = node.force_breaker(upstream, state)
        if report is None:
            return AdminResponse.json(404, {"error": f"no upstream named {upstream!r}"})
        return AdminResponse.json(200, report)

    return {
        ("POST", "/admin/breakers/{upstream}"): breaker,
        ("GET", "/health/live"): health("liveness"),
        ("GET", "/health/ready"): health("readiness"),
        ("GET", "/health"): health(None),
        ("GET", "/admin/upstreams"): upstreams,
        ("GET", "/admin/policies"): policies,
        ("POST", "/admin/reload"): reload,
    }
