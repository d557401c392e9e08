"""The mesh client: the seed's ``createServiceMeshClient`` for Trio programs.

Every call names a service and a path; the policy files decide the rest
(discovery, balancing, session affinity, breaker, retries with backoff,
timeouts, health, fallbacks, mTLS), whether the client runs that machinery
itself (embedded) or the local meshnode does it (sidecar). See docs/client.md.
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlencode

import trio

from meshnode import __version__
from meshnode.client.metrics import seed_metrics
from meshnode.client.response import CallReset, MeshResponse, StreamingResponse
from meshnode.client.transports import Embedded, Sidecar, Transport
from meshnode.net.h2.validation import Malformed, check_request
from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.stream import CANCEL, Headers, ResponseHead, Stream, StreamReset
from meshnode.policy import Address
from meshnode.reload import ReloadResult

CLIENT_ID_HEADER = "x-client-id"  # the header SPEC's session affinity and rate limits key on
CHUNK = 64 * 1024  # request bodies go out in pieces of at most this size
DEFAULT_SIDECAR = "127.0.0.1:15001"
DEFAULT_ADMIN = "http://127.0.0.1:15000"
SETTLE_TIMEOUT = 1.0  # seconds a finished call may wait for its figures to be recorded

Content = bytes | AsyncIterable[bytes]


class CallOptions(TypedDict, total=False):
    """What a call may add to its method, service, path and JSON body (docs/client.md)."""

    content: Content | None
    params: Mapping[str, str] | None
    headers: Mapping[str, str] | None
    client_id: str | None


class MeshClient:
    """Calls to services through the mesh. Made by ``open_mesh_client``."""

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self._transport = transport
        self._user_agent = f"meshnode-client/{__version__} ({name})".encode()

    @property
    def mode(self) -> str:
        """``embedded`` or ``sidecar``."""
        return self._transport.mode

    async def get(self, service: str, path: str, **options: Unpack[CallOptions]) -> MeshResponse:
        return await self.request("GET", service, path, **options)

    async def post(
        self, service: str, path: str, json: Any = None, **options: Unpack[CallOptions]
    ) -> MeshResponse:
        return await self.request("POST", service, path, json=json, **options)

    async def put(
        self, service: str, path: str, json: Any = None, **options: Unpack[CallOptions]
    ) -> MeshResponse:
        return await self.request("PUT", service, path, json=json, **options)

    async def delete(self, service: str, path: str, **options: Unpack[CallOptions]) -> MeshResponse:
        return await self.request("DELETE", service, path, **options)

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        json: Any = None,
        **options: Unpack[CallOptions],
    ) -> MeshResponse:
        """One call, its whole response read. A mesh-made answer (an open breaker, a timeout)
        is a response like any other: see ``mesh_error`` and ``raise_for_status``."""
        async with self.stream(method, service, path, json=json, **options) as response:
            return await response.read()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json: Any = None,
        content: Content | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        client_id: str | None = None,
    ) -> AsyncIterator[StreamingResponse]:
        """One call whose response body is read as it arrives (``iter_bytes``); ``content``
        may be an async iterable of bytes, sent as it is produced.

        Leaving the block (or a cancelled call) resets the stream: the mesh stops the
        request, its upstream stream included.
        """
        head, body = self._request_head(method, service, path, json, content, params, headers)
        if client_id is not None:
            head.append((CLIENT_ID_HEADER.encode(), client_id.encode()))
        stream = await self._transport.open(head, end_stream=body is None)
        try:
            if body is None:
                yield await _response(service, stream, None)
                return
            upload = _Upload(stream, body)
            with _one_exception():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(upload.run)
                    yield await _response(service, stream, upload)
                    nursery.cancel_scope.cancel()
        finally:
            stream.reset(CANCEL)
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT):
                await self._transport.settle(stream)  # so metrics() has counted this call

    async def metrics(self) -> dict[str, Any]:
        """The seed's ``getMetrics()``: load balancer per instance, breaker per service, retry
        totals. In sidecar mode these are the node's figures, other callers' included."""
        return seed_metrics(self.name, self.mode, await self._transport.reports())

    async def reload(self) -> ReloadResult:
        """Embedded mode: read the policy files again now (they are also watched)."""
        if not isinstance(self._transport, Embedded):
            raise RuntimeError("the sidecar node reloads its own policies (meshnode reload)")
        return await self._transport.reload()

    def _request_head(
        self,
        method: str,
        service: str,
        path: str,
        json: Any,
        content: Content | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[Headers, Content | None]:
        if not path.startswith("/"):
            raise ValueError(f"the path must start with '/': {path!r}")
        if json is not None and content is not None:
            raise ValueError("give json= or content=, not both")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        head: Headers = [
            (b":method", method.upper().encode()),
            (b":scheme", b"http"),
            (b":authority", service.encode()),
            (b":path", path.encode()),
        ]
        given = {name.lower(): value for name, value in (headers or {}).items()}
        body = content
        if json is not None:
            body = jsonlib.dumps(json).encode()
            given.setdefault("content-type", "application/json")
        if isinstance(body, bytes):
            given.setdefault("content-length", str(len(body)))
        given.setdefault("user-agent", self._user_agent.decode())
        head.extend(strip_hop_by_hop((n.encode(), v.encode()) for n, v in given.items()))
        checked = check_request(head, max_count=len(head), underscores="allow")
        if isinstance(checked, Malformed):
            raise ValueError(f"a request to {service} cannot be sent: {checked.reason}")
        return head, body


class _Upload:
    """The request body going out while the response is awaited. An error of the caller's
    own body iterator resets the call and is raised to the caller, as it is."""

    def __init__(self, stream: Stream, body: Content) -> None:
        self.stream = stream
        self.body = body
        self.error: Exception | None = None

    async def run(self) -> None:
        try:
            if isinstance(self.body, bytes):
                await self._send(self.body)
            else:
                async for chunk in self.body:
                    await self._send(chunk)
            await self.stream.end()
        except StreamReset:
            return  # answered (or refused) before the body was all sent: the response says
        except Exception as exc:
            self.error = exc
            self.stream.reset(CANCEL)

    async def _send(self, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            await self.stream.send_data(data[start : start + CHUNK])


async def _response(service: str, stream: Stream, upload: _Upload | None) -> StreamingResponse:
    try:
        item = await stream.receive()
    except StreamReset as reset:
        if upload is not None and upload.error is not None:
            raise upload.error from None
        raise CallReset(f"the call to {service} was reset before a response: {reset}") from None
    if not isinstance(item, ResponseHead):
        raise CallReset(f"{service} sent no response head")
    return StreamingResponse(service, item.headers, stream)


@asynccontextmanager
async def open_mesh_client(
    name: str,
    *,
    policies: str | Path | None = None,
    sidecar: str | None = None,
    admin: str | None = None,
    watch: bool = True,
) -> AsyncIterator[MeshClient]:
    """A mesh client named ``name`` (the caller's service), open for the block.

    ``policies`` (a meshnode policy directory) runs it embedded: the upstream actor
    groups and request path of a node, in this process, talking HTTP/2 (mTLS where
    the policies say) straight to the services; the files are watched and reloaded.
    Otherwise it is a sidecar client of the meshnode at ``sidecar`` (default
    127.0.0.1:15001, its outbound listener) whose admin API (``admin``, or
    MESHNODE_ADMIN, default http://127.0.0.1:15000) gives ``metrics()``.
    """
    if policies is not None and sidecar is not None:
        raise ValueError("give policies= (embedded) or sidecar= (the local node), not both")
    with _one_exception():  # the caller's block runs inside the client's nursery
        async with trio.open_nursery() as nursery:
            transport: Embedded | Sidecar
            if policies is not None:
                transport = await Embedded.start(name, Path(policies), nursery, watch=watch)
            else:
                address = Address.parse(sidecar or DEFAULT_SIDECAR)
                admin_url = admin or os.environ.get("MESHNODE_ADMIN") or DEFAULT_ADMIN
                transport = Sidecar(address, admin_url, nursery)
            try:
                yield MeshClient(name, transport)
            finally:
                transport.close()
                nursery.cancel_scope.cancel()


@contextmanager
def _one_exception() -> Iterator[None]:
    """Trio's nurseries raise groups; a caller of this library gets its own exception back
    as it was raised when it is the only one."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
