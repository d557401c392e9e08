"""A small HTTP/1.1 server (h11) that dispatches on method and path.

The admin plane is low-volume and operator-facing, so it favours plain code:
one task per connection, keep-alive, a header-read timeout so a silent client
cannot hold a connection forever, and a bounded request body.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import h11
import trio

from meshnode.policy.units import Address

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
MAX_BODY = 1024 * 1024


@attrs.frozen
class AdminRequest:
    method: str
    path: str
    query: str
    body: bytes
    params: dict[str, str] = attrs.field(factory=dict)  # from "{name}" segments of the route

    def query_value(self, name: str) -> str | None:
        values = urllib.parse.parse_qs(self.query).get(name)
        return values[0] if values else None


@attrs.frozen
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> AdminResponse:
        return cls(status, json.dumps(payload, indent=2).encode() + b"\n")


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


class AdminHTTPServer:
    def __init__(self, routes: Mapping[tuple[str, str], Handler]) -> None:
        self._routes = routes

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
            pass
        except Exception:
            log.exception("admin connection failed")
        finally:
            await trio.aclose_forcefully(transport)

    async def _converse(self, transport: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            request = await self._read_request(transport, conn)
            if request is None:
                return
            response = await self._dispatch(request)
            headers = [
                ("content-type", response.content_type),
                ("content-length", str(len(response.body))),
                ("cache-control", "no-store"),
            ]
            for event in (
                h11.Response(status_code=response.status, headers=headers),
                h11.Data(data=response.body),
                h11.EndOfMessage(),
            ):
                await transport.send_all(conn.send(event) or b"")
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, transport: trio.SocketStream, conn: h11.Connection
    ) -> AdminRequest | None:
        target = b""
        method = b""
        body = bytearray()
        with trio.fail_after(READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await transport.receive_some(65536))
                elif isinstance(event, h11.Request):
                    method, target = event.method, event.target
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise h11.ProtocolError("request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    path, _, query = target.decode("ascii", "replace").partition("?")
                    return AdminRequest(method.decode(), path, query, bytes(body))
                else:  # ConnectionClosed or PAUSED
                    return None

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        allowed = False
        for (method, pattern), handler in self._routes.items():
            params = _match(pattern, request.path)
            if params is None:
                continue
            if method == request.method:
                return await handler(attrs.evolve(request, params=params))
            allowed = True
        if allowed:
            return AdminResponse.json(405, {"error": f"{request.method} not allowed here"})
        return AdminResponse.json(404, {"error": f"no admin endpoint {request.path}"})


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
