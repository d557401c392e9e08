"""One try of a request against one endpoint.

A try ends in one of three ways: it relays a response to the client (and
returns its status); it fails before anything reached the client, raising
``AttemptFailed`` with the condition a retry policy would name
(``connect-failure``, ``refused-stream``, ``reset``, ``timeout``, or the
status the ``judge`` refused to relay); or the upstream breaks mid-body, which
raises ``StreamReset`` (the client's stream is reset, never truncated). The
per-try timeout bounds the wait for the response head: once a head has been
relayed a retry is impossible, and the request timeout bounds the rest. Both
are the deadline of one cancel scope, the try's (``scope``): the caller
decides which one cancelled it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import trio

from meshnode.actors.picking import EndpointLoad
from meshnode.errors import MeshError, UpstreamConnectFailure, UpstreamReset
from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.pool import PLAIN_H2, UpstreamConnections, UpstreamPool
from meshnode.net.stream import CANCEL, GOAWAY, ResponseHead, Stream, StreamReset
from meshnode.policy.models import Endpoint
from meshnode.proxy.body import RequestBody
from meshnode.proxy.headers import HeaderList
from meshnode.proxy.relay import relay_body
from meshnode.proxy.tunnel import Tunnel

Judge = Callable[[int, HeaderList], None]


class AttemptFailed(Exception):
    """A try that failed before anything reached the client: the request may be retried."""

    def __init__(
        self,
        condition: str,
        error: MeshError,
        *,
        headers: HeaderList | None = None,
        retry_delay: float | None = None,
        reset: StreamReset | None = None,
    ) -> None:
        super().__init__(condition)
        self.condition = condition
        self.error = error
        self.headers = headers or []
        self.retry_delay = retry_delay  # decided already (by the judge), else None
        # The upstream's reset, before any answer: what it says of the connection's lifecycle.
        self.reset = reset
        # Why the request goes again at once, free (the retry loop decides: tries.py).
        self.resend: str | None = None


def attempt(exchange: Exchange) -> Coroutine[Any, Any, tuple[int, HeaderList]]:
    """Run ``exchange``: send the request and relay the answer; return its status and head.
    The caller closes the exchange once it is done (``Exchange.close``).

    A request without a body needs no upload task, hence no nursery: that is most
    requests, and a nursery per try is a visible share of their cost; their try is the
    exchange's own coroutine, with no other in between.
    """
    if exchange.body is None:
        return exchange.run(None)
    return _with_upload(exchange)


async def _with_upload(exchange: Exchange) -> tuple[int, HeaderList]:
    """The try of a request with a body: its upload runs beside the wait for the answer."""
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            result = await exchange.run(nursery)
        except (AttemptFailed, StreamReset, MeshError) as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


class Exchange:
    """One try: its endpoint's slot, its span, and its exchange with the endpoint, in two
    steps: the request out and the response head back (``head``), then that head judged
    and relayed with its body (``relay``). A hedged request runs the first step of several
    at once and the second of the one whose head came first."""

    __slots__ = (
        "body",
        "client",
        "connections",
        "deadline",
        "ended",
        "endpoint",
        "extra_headers",
        "headers",
        "judge",
        "load",
        "per_try",
        "pool",
        "scope",
        "span",
        "started",
        "tap",
        "tunnel",
        "upstream",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        endpoint: Endpoint,
        headers: HeaderList,
        body: RequestBody | None,
        client: Stream,
        scope: trio.CancelScope,
        *,
        started: float,
        deadline: float,
        load: EndpointLoad,
        span: Any = None,
        per_try: float = math.inf,
        judge: Judge | None = None,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        tap: Callable[[bytes], None] | None = None,
        connections: UpstreamConnections = PLAIN_H2,
        tunnel: Tunnel | None = None,
    ) -> None:
        """``scope`` is the try's cancel scope, ``deadline`` the request's: until the
        response head arrives the scope's deadline is the try's, ``per_try`` seconds after
        it ``started``, when that is sooner (``run`` moves it there, unless the scope was
        opened with it), and the request's after. ``tunnel``: the request is a WebSocket;
        once the upstream accepted it, the tunnel carries its bytes both ways. ``load``:
        the endpoint's slot the try holds; ``span``: its trace span, if it is traced."""
        self.connections = connections
        self.tunnel = tunnel
        self.pool = pool
        self.endpoint = endpoint
        self.headers = headers
        self.body = body
        self.client = client
        self.scope = scope
        self.started = started
        self.deadline = deadline
        self.load = load
        self.span = span
        self.ended = False  # settled: its slot given back, its span ended
        self.per_try = per_try
        self.judge = judge
        self.extra_headers = extra_headers
        self.tap = tap
        self.upstream: Stream | None = None

    async def run(self, nursery: trio.Nursery | None) -> tuple[int, HeaderList]:
        """The whole try: ``head`` under the per-try deadline (when that is sooner than the
        request's), then ``relay`` under the request's. Written out here rather than in a
        helper: the request's task passes through every coroutine of this chain each time
        it waits."""
        scope = self.scope
        request_deadline = self.deadline
        try_deadline = self.started + self.per_try
        if try_deadline >= request_deadline:
            return await self.relay(await self.head(nursery))
        if scope.deadline != try_deadline:  # opened with the request's: it waited for a slot
            scope.deadline = try_deadline
        head = await self.head(nursery)
        if scope.cancel_called:  # the deadline passed as the head arrived: too late to relay
            await trio.lowlevel.checkpoint()  # raises the cancellation, nothing relayed
        scope.deadline = request_deadline
        return await self.relay(head)

    async def relay(self, head: ResponseHead) -> tuple[int, HeaderList]:
        """Judge ``head`` (the judge raises ``AttemptFailed`` to refuse it), then relay it
        and the body; return the status and the upstream's head."""
        upstream = self.upstream
        assert upstream is not None
        status = head.status
        if self.judge is not None:
            self.judge(status, head.headers)
        no_body = upstream.consume_end()
        out = strip_hop_by_hop(head.headers, request=False)
        out.extend(self.extra_headers)
        await self.client.send_headers(out, end_stream=no_body)
        if self.tunnel is not None and status == 200:
            await self.tunnel.carry(self.client, upstream)
        elif not no_body:
            await relay_body(upstream, self.client, self.tap)
        return status, head.headers

    def close(self) -> None:
        """Reset the upstream stream with CANCEL, unless it already ended."""
        if self.upstream is not None:
            self.upstream.reset(CANCEL)

    async def head(self, nursery: trio.Nursery | None) -> ResponseHead:
        """Open the upstream stream, start the body's upload in ``nursery``, and wait for
        the response head; ``AttemptFailed`` when the try fails before one. Called again
        after a cancelled wait, it waits on for the head of the request already sent."""
        upstream = self.upstream
        if upstream is None:
            upstream = self.upstream = await self._open(nursery)
        try:
            head = await upstream.receive()
        except StreamReset as reset:
            raise _failed_by(reset) from reset
        if not isinstance(head, ResponseHead):
            raise AttemptFailed("reset", UpstreamReset("the upstream sent no response head"))
        return head

    async def _open(self, nursery: trio.Nursery | None) -> Stream:
        """The upstream stream, its request sent (the body's upload started in ``nursery``)."""
        try:
            upstream = await self.pool.open_stream(
                self.endpoint.address,
                self.headers,
                end_stream=self.body is None,
                connections=self.connections,
            )
        except UpstreamConnectFailure as error:
            raise AttemptFailed("connect-failure", error) from error
        except StreamReset as reset:  # the connection failed as the stream opened
            raise _failed_by(reset) from reset
        if nursery is not None and self.body is not None and self.tunnel is None:
            nursery.start_soon(_upload, self.body, upstream)
        return upstream


async def _upload(body: RequestBody, upstream: Stream) -> None:
    """Send the request body; a reset here is seen (and answered) by the response side."""
    try:
        await body.send_to(upstream)
    except StreamReset:
        return


def _failed_by(reset: StreamReset) -> AttemptFailed:
    """A try the upstream's reset ended before any answer."""
    condition = "refused-stream" if reset.refused else "reset"
    return AttemptFailed(condition, UpstreamReset(_reset_detail(reset)), reset=reset)


def _reset_detail(reset: StreamReset) -> str:
    if reset.connection_lost:
        return "the upstream connection closed before the response"
    if reset.lifecycle == GOAWAY:
        return "the upstream's GOAWAY left the stream unprocessed"
    if reset.refused:
        return "the upstream refused the stream"
    return f"the upstream reset the stream (HTTP/2 error code {reset.code})"
