"""Forward one downstream HTTP/2 stream to an upstream, streaming both ways.

One task serves a request; a second runs only while a request body is being
uploaded. Bodies are relayed item by item, and a received DATA frame is
acknowledged (window handed back to the sender) only once the other side has
accepted it, so flow control holds end to end. Resets cross over: a client
reset cancels the task (the stream's cancel scope) and the upstream stream is
reset on the way out; an upstream reset before the response head becomes a
502 ``upstream-reset``, after it a reset of the client's stream, never a
truncated success.
"""

from __future__ import annotations

import logging
import math

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.errors import BadRequest, MeshError, NoRoute, Timeout, UpstreamReset
from meshnode.net.pool import UpstreamPool
from meshnode.net.session import (
    CANCEL,
    INTERNAL_ERROR,
    Data,
    EndOfStream,
    ResponseHead,
    Stream,
    StreamReset,
    Trailers,
)
from meshnode.policy.models import Endpoint
from meshnode.proxy.headers import HeaderList, forwarded_request_headers, strip_hop_by_hop
from meshnode.proxy.responses import error_response
from meshnode.proxy.routing import RouteTable, authority_host

log = logging.getLogger(__name__)

# A request the upstream provably never processed is sent again this many times,
# whatever the retry policy says; it is how a proxy rides out an upstream's GOAWAY.
UNPROCESSED_RETRIES = 1


class Proxy:
    """The outbound request path. ``routes`` and ``upstreams`` are swapped whole on reload.

    A request resolves its upstream group and policy once, at its start, so a
    reload never changes the rules a request in flight runs under.
    """

    def __init__(
        self, routes: RouteTable, upstreams: dict[str, UpstreamGroup], pool: UpstreamPool
    ) -> None:
        self.routes = routes
        self.upstreams = upstreams
        self.pool = pool

    def swap(self, routes: RouteTable, upstreams: dict[str, UpstreamGroup]) -> None:
        self.routes, self.upstreams = routes, upstreams

    async def handle(self, stream: Stream, client_ip: bytes) -> None:
        """Serve one request stream to the end. Never raises: one request fails alone."""
        with trio.CancelScope() as scope:
            stream.cancel_scope = scope
            if stream.error is not None:
                return
            try:
                await self._forward(stream, client_ip)
            except MeshError as error:
                await _answer(stream, error)
            except StreamReset as reset:
                if reset.stream is not stream:
                    stream.reset(INTERNAL_ERROR if reset.connection_lost else reset.code)
            except Exception:
                log.exception("request on stream %d failed", stream.id)
                stream.reset(INTERNAL_ERROR)

    async def _forward(self, stream: Stream, client_ip: bytes) -> None:
        headers = stream.headers or []
        authority = path = b""
        for name, value in headers:
            if name == b":authority" or (name == b"host" and not authority):
                authority = value
            elif name == b":path":
                path = value
        if not authority:
            raise BadRequest("the request names no :authority or host")
        upstream_name = self.routes.resolve(authority_host(authority), path, headers)
        if upstream_name is None:
            raise NoRoute(f"no upstream serves {authority.decode(errors='replace')}")
        upstream = self.upstreams[upstream_name]
        policy = upstream.policy
        out_headers, request_id = forwarded_request_headers(headers, client_ip)
        timeout = policy.timeout
        limit = timeout.request or math.inf
        if timeout.per_try:
            limit = min(limit, timeout.per_try)
        with trio.move_on_after(limit) as deadline:
            try:
                await self._exchange(stream, upstream, out_headers)
            except MeshError as error:
                error.upstream = upstream.name
                error.request_id = request_id
                raise
        if deadline.cancelled_caught:
            timeout_error = Timeout(f"no complete response within {limit:g}s", upstream.name)
            timeout_error.request_id = request_id
            raise timeout_error

    async def _exchange(self, stream: Stream, upstream: UpstreamGroup, headers: HeaderList) -> None:
        no_body = stream.consume_end()
        for attempt in range(1, 1 + UNPROCESSED_RETRIES + 1):
            endpoint = upstream.pick()
            load = upstream.request_started(endpoint)
            started = trio.current_time()
            outcome = _Outcome()
            try:
                await self._attempt(stream, endpoint, headers, no_body, outcome)
                return
            except _Unprocessed as unprocessed:
                # RFC 9113 8.7: the upstream never processed it (GOAWAY, REFUSED_STREAM), so
                # sending it again is safe, provided no body was consumed.
                if not no_body or attempt > UNPROCESSED_RETRIES:
                    raise UpstreamReset(_reset_detail(unprocessed.reset)) from unprocessed.reset
            finally:
                upstream.request_finished(
                    endpoint, load, outcome.status, trio.current_time() - started
                )

    async def _attempt(
        self,
        stream: Stream,
        endpoint: Endpoint,
        headers: HeaderList,
        no_body: bool,
        outcome: _Outcome,
    ) -> None:
        upstream_stream = await self.pool.open_stream(endpoint.address, headers, end_stream=no_body)
        try:
            if no_body:
                await _relay_response(upstream_stream, stream, outcome)
                return
            failure: BaseException | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_upload, stream, upstream_stream)
                try:
                    await _relay_response(upstream_stream, stream, outcome)
                except (StreamReset, MeshError, _Unprocessed) as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            upstream_stream.reset(CANCEL)


class _Outcome:
    """What the attempt learnt, for the breaker and the latency average."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class _Unprocessed(Exception):
    def __init__(self, reset: StreamReset) -> None:
        self.reset = reset


async def _relay_response(source: Stream, client: Stream, outcome: _Outcome) -> None:
    try:
        head = await source.receive()
    except StreamReset as reset:
        if reset.refused:
            raise _Unprocessed(reset) from reset
        raise UpstreamReset(_reset_detail(reset)) from reset
    if not isinstance(head, ResponseHead):
        raise UpstreamReset("the upstream sent no response head")
    outcome.status = _status_of(head.headers)
    await client.send_headers(strip_hop_by_hop(head.headers), end_stream=source.consume_end())
    if not client.local_closed:
        try:
            await relay_body(source, client)
        except StreamReset as reset:
            if reset.stream is source:
                outcome.status = (
                    0  # a broken body is the upstream's failure, whatever its head said
                )
            raise


async def _upload(client: Stream, upstream: Stream) -> None:
    """Relay the request body; a reset here is seen (and answered) by the response side."""
    try:
        await relay_body(client, upstream)
    except StreamReset:
        return


async def relay_body(source: Stream, sink: Stream) -> None:
    """Copy DATA and trailers from ``source`` to ``sink``, handing window back as it goes."""
    while True:
        item = await source.receive()
        if type(item) is Data:
            # The end marker rides on the last DATA frame, and empty DATA frames are never
            # relayed alone: peers (nghttp2 among them) treat a run of them as a flood.
            end = source.consume_end()
            if item.data or end:
                await sink.send_data(item.data, end_stream=end)
            source.ack(item.flow_length)
            if end:
                return
        elif type(item) is Trailers:
            await sink.send_headers(strip_hop_by_hop(item.headers), end_stream=True)
            return
        elif type(item) is EndOfStream:
            await sink.end()
            return


async def _answer(stream: Stream, error: MeshError) -> None:
    log.info("stream %d: %s (%s): %s", stream.id, error.reason, error.upstream, error.detail)
    if stream.headers_sent:
        stream.reset(CANCEL)
        return
    headers, body = error_response(error)
    try:
        await stream.send_headers(headers)
        await stream.send_data(body, end_stream=True)
    except StreamReset:
        return


def _status_of(headers: HeaderList) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
    return 0


def _reset_detail(reset: StreamReset) -> str:
    if reset.connection_lost:
        return "the upstream connection closed before the response"
    if reset.refused:
        return "the upstream refused the stream"
    return f"the upstream reset the stream (HTTP/2 error code {reset.code})"
