"""The admin API's routes (SPEC section 6), over whatever implements ``NodeControl``.

The admin layer sits below the node, so it sees the node only through this
protocol: reports to serialize and commands to carry out.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import trio
import trio_websocket

from meshnode.admin import status_page
from meshnode.admin.http import AdminRequest, AdminResponse, Handler, WebSocketHandler
from meshnode.admin.metrics import CONTENT_TYPE
from meshnode.events import EventBus
from meshnode.resilience.core.health import CheckResult, CheckType, health_report

log = logging.getLogger(__name__)

# Events a WebSocket subscriber may fall behind by before it loses the oldest.
SUBSCRIBER_QUEUE = 1000


class ReloadOutcome(Protocol):
    @property
    def applied(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


class NodeControl(Protocol):
    bus: EventBus

    def health_checks(self) -> list[CheckResult]: ...

    def upstreams_report(self) -> dict[str, Any]: ...

    def policies_report(self) -> dict[str, Any]: ...

    def status_report(self) -> dict[str, Any]:
        """What the status page shows: the node, its policies, every upstream with rates."""

    def metrics(self) -> bytes: ...

    async def reload(self, trigger: str) -> ReloadOutcome: ...

    def request_drain(self, *, then_exit: bool) -> None: ...

    def forget_sessions(self, client: str) -> int:
        """Forget a client's session affinity everywhere; how many sessions went."""

    def force_breaker(self, upstream: str, state: str) -> dict[str, Any] | None:
        """Apply an operator override; None if there is no such upstream."""

    async def queue_report(self, upstream: str) -> dict[str, Any] | None:
        """The upstream's queue and dead letters; None without such an upstream or queue."""

    async def queue_entry(self, upstream: str, entry_id: int) -> dict[str, Any] | None:
        """One queued or dead entry, headers and a body preview; None if there is none."""

    async def queue_retry(self, upstream: str) -> int | None:
        """Dead letters sent back to the queue; None without such an upstream or queue."""

    async def queue_purge(self, upstream: str) -> int | None:
        """Entries and dead letters dropped; None without such an upstream or queue."""


def _html(text: str) -> AdminResponse:
    headers = (
        ("content-security-policy", status_page.CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
    )
    return AdminResponse(200, text.encode(), "text/html; charset=utf-8", headers)


def admin_routes(node: NodeControl) -> dict[tuple[str, str], Handler]:
    def health(kind: CheckType | None) -> Handler:
        async def answer(_: AdminRequest) -> AdminResponse:
            status, body = health_report(node.health_checks(), kind)
            return AdminResponse.json(status, body)

        return answer

    async def metrics(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, node.metrics(), CONTENT_TYPE)

    async def upstreams(_: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, node.upstreams_report())

    async def policies(_: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, node.policies_report())

    async def status(_: AdminRequest) -> AdminResponse:
        return _html(status_page.page(node.status_report()))

    async def status_live(_: AdminRequest) -> AdminResponse:
        return _html(status_page.live(node.status_report()))

    async def static(request: AdminRequest) -> AdminResponse:
        name = request.params["name"]
        if name not in status_page.STATIC:
            return AdminResponse.json(404, {"error": f"no static file {name!r}"})
        return AdminResponse(200, status_page.STATIC[name], status_page.STATIC_TYPES[name])

    async def reload(_: AdminRequest) -> AdminResponse:
        result = await node.reload("admin")
        return AdminResponse.json(200 if result.applied else 422, result.to_json())

    async def drain(_: AdminRequest) -> AdminResponse:
        node.request_drain(then_exit=False)
        return AdminResponse.json(
            202, {"draining": True, "detail": "no new connections; requests in flight finish"}
        )

    async def sessions(request: AdminRequest) -> AdminResponse:
        client = request.params["client"]
        return AdminResponse.json(
            200, {"client": client, "forgotten": node.forget_sessions(client)}
        )

    async def breaker(request: AdminRequest) -> AdminResponse:
        state = request.query_value("state")
        if state not in ("open", "closed", "auto"):
            return AdminResponse.json(400, {"error": "state must be open, closed or auto"})
        upstream = request.params["upstream"]
        report = node.force_breaker(upstream, state)
        if report is None:
            return AdminResponse.json(404, {"error": f"no upstream named {upstream!r}"})
        return AdminResponse.json(200, report)

    def no_queue(upstream: str) -> AdminResponse:
        return AdminResponse.json(404, {"error": f"no queue fallback for {upstream!r}"})

    async def queue(request: AdminRequest) -> AdminResponse:
        upstream = request.params["upstream"]
        report = await node.queue_report(upstream)
        return no_queue(upstream) if report is None else AdminResponse.json(200, report)

    async def queue_entry(request: AdminRequest) -> AdminResponse:
        upstream, entry = request.params["upstream"], request.params["id"]
        found = await node.queue_entry(upstream, int(entry)) if entry.isdigit() else None
        if found is None:
            return AdminResponse.json(404, {"error": f"no entry {entry} queued for {upstream!r}"})
        return AdminResponse.json(200, found)

    async def queue_retry(request: AdminRequest) -> AdminResponse:
        upstream = request.params["upstream"]
        moved = await node.queue_retry(upstream)
        if moved is None:
            return no_queue(upstream)
        return AdminResponse.json(200, {"upstream": upstream, "requeued": moved})

    async def queue_purge(request: AdminRequest) -> AdminResponse:
        upstream = request.params["upstream"]
        removed = await node.queue_purge(upstream)
        if removed is None:
            return no_queue(upstream)
        return AdminResponse.json(200, {"upstream": upstream, "purged": removed})

    return {
        ("GET", "/"): status,
        ("GET", "/status/live"): status_live,
        ("GET", "/static/{name}"): static,
        ("GET", "/admin/queue/{upstream}"): queue,
        ("GET", "/admin/queue/{upstream}/{id}"): queue_entry,
        ("POST", "/admin/queue/{upstream}/retry"): queue_retry,
        ("DELETE", "/admin/queue/{upstream}"): queue_purge,
        ("GET", "/health/live"): health("liveness"),
        ("GET", "/health/ready"): health("readiness"),
        ("GET", "/health"): health(None),
        ("GET", "/metrics"): metrics,
        ("GET", "/admin/upstreams"): upstreams,
        ("GET", "/admin/policies"): policies,
        ("POST", "/admin/reload"): reload,
        ("POST", "/admin/drain"): drain,
        ("DELETE", "/admin/sessions/{client}"): sessions,
        ("POST", "/admin/breakers/{upstream}"): breaker,
    }


def admin_websockets(node: NodeControl) -> dict[str, WebSocketHandler]:
    async def events(websocket: trio_websocket.WebSocketConnection) -> None:
        """One JSON object per event. The bus never waits for us: a subscriber that
        cannot keep up loses its oldest events and is sent ``events-missed``."""
        with node.bus.subscribe(SUBSCRIBER_QUEUE) as subscription:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, websocket, nursery.cancel_scope)
                async for event in subscription:
                    await websocket.send_message(json.dumps(event.to_json()))

    return {"/admin/events": events}


async def _until_closed(
    websocket: trio_websocket.WebSocketConnection, scope: trio.CancelScope
) -> None:
    """Read (and ignore) what the subscriber sends, to notice when it goes away."""
    try:
        while True:
            await websocket.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()
