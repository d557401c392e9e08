"""A small HTTP/1.1 server (h11) that dispatches on method and path, with WebSocket hand-off.

The admin plane is low-volume and operator-facing, so it favours plain code:
one task per connection, keep-alive, a header-read timeout so a silent client
cannot hold a connection forever, and a bounded request body. A WebSocket
upgrade (the first request of a connection, on a WebSocket route) is handed to
trio-websocket with the bytes already read replayed in front of the socket.
Mutating methods need ``Authorization: Bearer <token>`` whenever a token is set.
What a web page in an operator's browser may not do is ``admin/origins.py``'s.
"""

from __future__ import annotations

import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import h11
import trio
import trio_websocket

from meshnode.admin.origins import change_problem, host_problem, origin_problem
from meshnode.net.replay import Replay
from meshnode.policy.units import Address

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
MAX_BODY = 1024 * 1024
MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})


@attrs.frozen
class AdminRequest:
    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)  # names lower-cased
    params: dict[str, str] = attrs.field(factory=dict)  # from "{name}" segments of the route

    def query_value(self, name: str) -> str | None:
        values = urllib.parse.parse_qs(self.query).get(name)
        return values[0] if values else None


@attrs.frozen
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Any) -> AdminResponse:
        return cls(status, json.dumps(payload, indent=2).encode() + b"\n")


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]
WebSocketHandler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]


class AdminHTTPServer:
    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        websockets: Mapping[str, WebSocketHandler] | None = None,
        token: Callable[[], str | None] = lambda: None,
        allowed_hosts: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        """``allowed_hosts``: host names this listener answers to besides addresses and
        localhost (``[admin] allowed_hosts``, read per request: it follows reloads)."""
        self._routes = routes
        self._websockets = websockets or {}
        self._token = token
        self._allowed_hosts = allowed_hosts

    async def serve(
        self,
        address: Address,
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        task_status.started([Address(*lst.socket.getsockname()[:2]) for lst in listeners])
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, transport: trio.SocketStream) -> None:
        try:
            await self._converse(transport, h11.Connection(h11.SERVER))
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            h11.ProtocolError,
        ):
            pass  # the client went away, stalled or spoke garbage: its connection alone ends
        except Exception:
            log.exception("admin connection failed")
        finally:
            await trio.aclose_forcefully(transport)

    async def _converse(self, transport: trio.SocketStream, conn: h11.Connection) -> None:
        first = True
        while True:
            raw = bytearray()
            request = await self._read_request(transport, conn, raw)
            if request is None:
                return
            misdirected = host_problem(request.headers, self._allowed_hosts())
            if misdirected is not None:
                response = AdminResponse.json(421, {"error": misdirected})
            elif request.path in self._websockets and "websocket" in request.headers.get(
                "upgrade", ""
            ):
                foreign = origin_problem(request.headers)
                if foreign is not None:
                    response = AdminResponse.json(403, {"error": foreign})
                elif first:
                    await self._hand_off(transport, bytes(raw), self._websockets[request.path])
                    return
                else:
                    response = AdminResponse.json(400, {"error": "upgrade on a fresh connection"})
            else:
                response = await self._dispatch(request)
            await self._respond(transport, conn, response)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
            first = False

    async def _respond(
        self, transport: trio.SocketStream, conn: h11.Connection, response: AdminResponse
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            *response.headers,
        ]
        for event in (
            h11.Response(status_code=response.status, headers=headers),
            h11.Data(data=response.body),
            h11.EndOfMessage(),
        ):
            await transport.send_all(conn.send(event) or b"")

    async def _read_request(
        self, transport: trio.SocketStream, conn: h11.Connection, raw: bytearray
    ) -> AdminRequest | None:
        target = method = b""
        headers: dict[str, str] = {}
        body = bytearray()
        with trio.fail_after(READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await transport.receive_some(65536)
                    raw += data
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    method, target = event.method, event.target
                    headers = {
                        name.decode("latin-1"): value.decode("latin-1").lower()
                        if name == b"upgrade"
                        else value.decode("latin-1")
                        for name, value in event.headers
                    }
                    if "websocket" in headers.get("upgrade", ""):
                        path = target.decode("ascii", "replace").partition("?")[0]
                        return AdminRequest(method.decode(), path, "", b"", headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise h11.ProtocolError("request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    path, _, query = target.decode("ascii", "replace").partition("?")
                    return AdminRequest(method.decode(), path, query, bytes(body), headers)
                else:  # ConnectionClosed or PAUSED
                    return None

    async def _hand_off(
        self, transport: trio.SocketStream, already_read: bytes, handler: WebSocketHandler
    ) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(
                nursery, Replay(transport, already_read)
            )
            websocket = await request.accept()
            try:
                await handler(websocket)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                await websocket.aclose()
            nursery.cancel_scope.cancel()

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        allowed = False
        for (method, pattern), handler in self._routes.items():
            params = _match(pattern, request.path)
            if params is None:
                continue
            if method == request.method:
                if method in MUTATING:
                    problem = change_problem(request.headers)
                    if problem is not None:
                        return AdminResponse.json(403, {"error": problem})
                    if not self._authorized(request):
                        return AdminResponse.json(401, {"error": "a valid admin token is required"})
                return await handler(attrs.evolve(request, params=params))
            allowed = True
        if allowed:
            return AdminResponse.json(405, {"error": f"{request.method} not allowed here"})
        return AdminResponse.json(404, {"error": f"no admin endpoint {request.path}"})

    def _authorized(self, request: AdminRequest) -> bool:
        token = self._token()
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _match(pattern: str, path: str) -> dict[str, str] | None:
    """Match "/admin/breakers/{upstream}" against a path; the named segments, or None."""
    wanted, given = pattern.split("/"), path.split("/")
    if len(wanted) != len(given):
        return None
    params = {}
    for want, got in zip(wanted, given, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = urllib.parse.unquote(got)
        elif want != got:
            return None
    return params
