"""Theory of operation: the outbound request path.

    route -> rate limit -> chaos -> breaker gate
          -> [retry loop: endpoint slot (bulkhead) -> one try (attempt.py)]
          -> outcome to the breaker -> fallback if configured -> response

One task serves a request (a second only while a request body uploads). The
request resolves its upstream group and policy once, at its start, so a reload
never changes the rules a request in flight runs under. The request timeout
bounds everything from the breaker gate on, retries and backoff included. A
client reset cancels the request's cancel scope; the upstream stream is reset
on the way out. Every outcome the node makes itself is a ``MeshError``, which
``handle`` answers (or, once a response has started, turns into a reset).

The rooms of the path: the request record (request.py), the fault ``[chaos]`` injects
(chaos.py), the retry loop (tries.py, over one try in attempt.py and the retry rules in
retry.py), and the fallbacks (fallback.py). This module is the gate between them.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.protections import Protections
from meshnode.actors.stats import UpstreamStats
from meshnode.errors import (
    BadRequest,
    ChaosAbort,
    CircuitOpen,
    ConcurrencyLimited,
    Forbidden,
    HeadersTooLarge,
    MeshError,
    NoRoute,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    Timeout,
    TunnelLimit,
    UpstreamConnectFailure,
    UpstreamFailed,
    UpstreamReset,
)
from meshnode.logs import SampledLog
from meshnode.net.listener import Peer
from meshnode.net.overload import Overload
from meshnode.net.pool import UpstreamPool
from meshnode.net.stream import CANCEL, INTERNAL_ERROR, NO_ERROR, Stream, StreamReset, ensure_open
from meshnode.policy.models import Limits, UpstreamPolicy
from meshnode.proxy import fallback
from meshnode.proxy.body import RequestBody
from meshnode.proxy.chaos import fault_for
from meshnode.proxy.headers import ForwardedHeaders, HeaderList
from meshnode.proxy.request import Request, RequestObserver
from meshnode.proxy.retry import is_breaker_failure
from meshnode.proxy.routing import RouteTable, authority_host
from meshnode.proxy.tries import Tries
from meshnode.proxy.tunnel import Tunnel
from meshnode.resilience.core.faults import NO_FAULT
from meshnode.resilience.spool import AsyncSpool

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when [tracing] asks for it
    from meshnode.tracing.tracer import MeshTracer

log = logging.getLogger(__name__)

# What a request body may be kept up to for resending when no [retry] says otherwise:
# a request the upstream left unanswered as it recycled a connection is sent again.
DEFAULT_REPLAY_BUFFER = 64 * 1024
# How much of a request body still on its way the node reads and drops once it has
# answered, and for how long, before it asks the client to stop (``_linger``).
LINGER_BYTES = 64 * 1024
LINGER = 1.0

_ERROR_CONDITIONS = {
    UpstreamConnectFailure: "connect-failure",
    UpstreamReset: "reset",
    Timeout: "timeout",
}


class Proxy:
    """The outbound request path. ``routes`` and ``upstreams`` are swapped whole on reload."""

    def __init__(
        self,
        routes: RouteTable,
        upstreams: dict[str, UpstreamGroup],
        pool: UpstreamPool,
        observers: list[RequestObserver] | None = None,
        trust_domain: str = "mesh.local",
    ) -> None:
        self.trust_domain = trust_domain  # names the identity a tls = "mesh" upstream must show
        self.queue: AsyncSpool | None = None  # the durable spool of queue fallbacks
        self.routes = routes
        self.upstreams = upstreams
        self.pool = pool
        # Told about every finished request (the access log); must not block.
        self.observers = observers if observers is not None else []
        self.unrouted = UpstreamStats()  # requests that reached no upstream
        self.forwarded = ForwardedHeaders()
        self.limits = Limits()  # the node's [limits], swapped on reload
        self.overload = Overload()  # the node's, shared with its listeners
        self.tunnels: set[Tunnel] = set()  # WebSocket tunnels open now
        self.tracer: MeshTracer | None = None  # the node's [tracing], swapped on reload
        # The errors the node answers itself: a line a second of each reason and upstream,
        # since shedding load answers thousands a second with the same one.
        self.error_log = SampledLog(log, logging.INFO)

    def close_tunnels(self, why: str) -> None:
        """End every open tunnel with a WebSocket Close (a drain at its deadline)."""
        for tunnel in list(self.tunnels):
            tunnel.close(why)

    def swap(self, routes: RouteTable, upstreams: dict[str, UpstreamGroup]) -> None:
        self.routes, self.upstreams = routes, upstreams

    async def handle(self, stream: Stream, peer: Peer) -> None:
        """Serve one request stream to the end. Never raises: one request fails alone."""
        request = Request(stream, peer)
        if stream.error is not None:
            return
        try:
            self._admit(stream)
            await self._forward(request)
        except MeshError as error:
            request.error = error.reason
            self.error_log.log(
                (error.reason, error.upstream),
                "stream %d: %s (%s): %s",
                *(stream.id, error.reason, error.upstream, error.detail),
            )
            await _answer(stream, error)
        except StreamReset as reset:
            if reset.stream is not stream:
                stream.reset(INTERNAL_ERROR if reset.connection_lost else reset.code)
        except Exception:
            log.exception("request on stream %d failed", stream.id)
            stream.reset(INTERNAL_ERROR)
        if _still_sending(stream):
            await _linger(request)
        # Answered while the client was still sending: RFC 9113 section 8.1 asks it to stop.
        stream.reset(NO_ERROR)
        group = request.group
        stats = group.stats if group is not None else self.unrouted
        stats.observe(stream.status_sent, trio.current_time() - request.started)
        if request.trace is not None:
            reason = request.error
            fell_back = reason is not None and reason.startswith("fallback:")
            request.trace.end(stream.status_sent, None if fell_back else reason)
        for observe in self.observers:
            observe(request)

    def _admit(self, stream: Stream) -> None:
        """Refuse what the session found malformed, and new work under memory pressure."""
        malformed = stream.malformed
        if malformed is not None:
            error = HeadersTooLarge if malformed.status == 431 else BadRequest
            raise error(malformed.reason)
        if self.overload.shedding:
            self.overload.shed += 1
            raise Overloaded("the node is over its memory limit: new requests are shed")

    async def _forward(self, request: Request) -> None:
        stream = request.stream
        request.read_head()
        if not request.authority:
            raise BadRequest("the request names no :authority or host")
        group = request.group = self._route(request)
        policy = group.policy
        request.out_headers, request.request_id = self.forwarded(
            request.headers, request.client_ip, request.peer.identity
        )
        if self.tracer is not None:
            trace = request.trace = self.tracer.begin(request.headers, request.describe)
            if trace is not None:
                request.out_headers = trace.outgoing(request.out_headers)
        replay = policy.retry.buffer if policy.retry is not None else DEFAULT_REPLAY_BUFFER
        if request.tunnel:
            replay = 0  # a tunnel's bytes are not a body to send again
        request.body = None if stream.consume_end() else self._body(request, replay)
        try:
            await self._serve(request, group, policy, request.started)
        except MeshError as error:
            error.upstream = error.upstream or group.name
            error.request_id = request.request_id
            plan = policy.fallback
            if plan is None or stream.headers_sent:
                raise
            answered = await fallback.fall_back(
                request,
                group,
                plan,
                error,
                queue=self.queue,
                elsewhere=lambda name: self._serve_elsewhere(request, name),
            )
            if not answered:
                raise
            request.error = f"fallback:{plan.kind}"
            if request.trace is not None:
                request.trace.event(
                    "fallback",
                    {"meshnode.fallback.kind": plan.kind, "meshnode.fallback.reason": error.reason},
                )

    async def _serve_elsewhere(self, request: Request, name: str) -> bool:
        """The ``upstream`` fallback: the request path again, against upstream ``name``."""
        target = self.upstreams.get(name)
        body = request.body
        if target is None or (body is not None and not body.replayable):
            return False
        marked = [fallback.fallback_header("upstream")]
        await self._serve(request, target, target.policy, trio.current_time(), marked)
        return True

    def _body(self, request: Request, replay: int) -> RequestBody:
        """The request's body, refused at once (413) if its declared length is over the limit."""
        limit = self.limits.max_request_body
        if limit is None or request.tunnel:
            return RequestBody(request.stream, replay)
        for name, value in request.headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestTooLarge(f"content-length {int(value)} is over {limit} bytes")
        return RequestBody(request.stream, replay, max_size=limit)

    def _route(self, request: Request) -> UpstreamGroup:
        """The upstream group that serves ``request`` (the outbound listener's routing)."""
        name = self.routes.resolve(authority_host(request.authority), request.path, request.headers)
        if name is None:
            raise NoRoute(f"no upstream serves {request.authority.decode(errors='replace')}")
        return self.upstreams[name]

    async def _serve(
        self,
        request: Request,
        group: UpstreamGroup,
        policy: UpstreamPolicy,
        now: float,
        extra_headers: HeaderList | None = None,
    ) -> None:
        """Everything after routing, from ``now`` on: the protections, then the tries."""
        protections = group.protections
        tries_from = now  # when the tries start: later when a fault or the limit delayed them
        limiter = protections.rate_limiter
        if limiter is not None:
            key = request.client_ip
            if limiter.per_client:
                header = policy.rate_limit.client_header.encode()  # type: ignore[union-attr]
                key = request.header(header) or key
                if request.peer.identity is not None:
                    key = request.peer.identity.encode()
            wait = limiter.check(key, now)
            if wait:
                group.stats.rate_limited += 1
                if request.trace is not None:
                    request.trace.event("rate-limited", {"meshnode.retry_after_s": wait})
                raise RateLimited(f"over {limiter.rate:g} requests a second", group.name, wait)
        faults = protections.fault_plan
        if policy.chaos is not None and faults is not None:
            fault = fault_for(policy.chaos, faults, protections.rng, request.headers)
            if request.trace is not None and fault is not NO_FAULT:
                request.trace.event(
                    "fault-injected",
                    {
                        "meshnode.fault.delay_ms": fault.delay * 1000,
                        "meshnode.fault.abort_status": fault.abort_status or 0,
                    },
                )
            if fault.delay:
                with trio.CancelScope() as delaying:
                    request.stream.cancel_scope = delaying
                    await trio.sleep(fault.delay)
                ensure_open(request.stream, connection_dead=False)
                tries_from = trio.current_time()
            if fault.abort_status is not None:
                raise ChaosAbort("injected by [chaos]", group.name, fault.abort_status)

        core = group.breaker.core
        permit = None
        if core is not None:
            permit = core.admit(now)
            if permit is None:
                group.stats.breaker_rejected += 1
                if request.trace is not None:
                    request.trace.event(
                        "circuit-open", {"meshnode.breaker.state": core.state.value}
                    )
                since = now - core.state_since
                raise CircuitOpen(f"the circuit is {core.state.value} for {since:.1f}s", group.name)
        status, condition, finished = 0, None, False
        admitted = None  # under [concurrency_limit]: the calls in flight when this one went
        try:
            if protections.concurrency is not None:  # no coroutine to await without one
                admitted = await self._under_the_limit(request, group, policy, protections)
                tries_from = trio.current_time()
            limit = policy.timeout.request or math.inf
            if request.tunnel:
                limit = policy.timeout.tunnel_lifetime
            elif request.grpc_timeout is not None:  # the caller's deadline, when tighter
                limit = min(limit, request.grpc_timeout)
            tries = Tries(
                request,
                group,
                policy,
                pool=self.pool,
                connections=group.connections(self.trust_domain),
                limit=limit,
                tunnels=self.tunnels,
                extra_headers=extra_headers or [],
                now=tries_from,
            )
            status = await tries.run()
            finished = True
        except MeshError as error:
            condition = _ERROR_CONDITIONS.get(type(error))
            if isinstance(error, UpstreamFailed):
                status = error.status_seen
            if isinstance(error, TunnelLimit):
                status = 200  # it opened, served, and was closed by the node's own limit
            finished = condition is not None or isinstance(error, UpstreamFailed | TunnelLimit)
            raise
        except StreamReset as reset:
            if reset.stream is not request.stream:  # the upstream broke mid-body
                condition, finished = "reset", True
            raise
        finally:
            end = trio.current_time()
            duration = request.outcome_time(end) - now
            concurrency = protections.concurrency
            if admitted is not None and concurrency is not None:
                if finished:
                    dropped = condition == "timeout" or status in (429, 503)
                    concurrency.finish(admitted, duration, dropped=dropped)
                else:
                    concurrency.release()
                protections.limit_freed.fire()
            if permit is not None and core is not None:
                if finished and policy.circuit_breaker is not None:
                    failed = is_breaker_failure(policy.circuit_breaker, status, condition)
                    core.record(permit, failed=failed, duration=duration, now=end)
                else:
                    core.release(permit)

    async def _under_the_limit(
        self,
        request: Request,
        group: UpstreamGroup,
        policy: UpstreamPolicy,
        protections: Protections,
    ) -> int:
        """Admission under ``[concurrency_limit]``: the calls in flight as this one goes.
        Over the limit, it waits ``queue_timeout`` for room, then is refused (503
        ``concurrency-limited``) without touching the upstream."""
        limiter = protections.concurrency
        assert limiter is not None
        admitted = limiter.admit()
        plan = policy.concurrency_limit
        if admitted is None and plan is not None and plan.queue_timeout > 0:
            with trio.move_on_after(plan.queue_timeout):
                while admitted is None:
                    await protections.limit_freed.wait()
                    admitted = limiter.admit()
        if admitted is None:
            group.stats.rejected["concurrency-limited"] += 1
            if request.trace is not None:
                request.trace.event("concurrency-limited", {"meshnode.limit": limiter.limit})
            raise ConcurrencyLimited(
                f"{limiter.inflight} requests in flight: the limit found is {limiter.limit}",
                group.name,
            )
        return admitted


class InboundProxy(Proxy):
    """The inbound (mTLS) listener's request path: every request goes to the local service,
    once the caller's verified identity is found in ``allow`` (403 ``forbidden`` otherwise)."""

    def __init__(self, local: UpstreamGroup, allow: frozenset[str], pool: UpstreamPool) -> None:
        super().__init__(RouteTable.build({}), {}, pool)
        self.local = local
        self.allow = allow

    def _route(self, request: Request) -> UpstreamGroup:
        identity = request.peer.identity
        if identity not in self.allow:
            raise Forbidden(f"{identity or 'a caller without identity'} is not allowed here")
        return self.local


def _still_sending(stream: Stream) -> bool:
    """Answered (the response ended) while the client's body is still on its way."""
    return stream.local_closed and not stream.remote_closed and stream.error is None


async def _linger(request: Request) -> None:
    """Answered while the client still sends its body (``_still_sending``): read and drop
    the rest for a moment (up to ``LINGER_BYTES`` within ``LINGER`` seconds) before the
    RST_STREAM NO_ERROR of RFC 9113 8.1. Some clients take that reset, arriving while they
    upload, as a failure of the whole exchange (curl exits 92 and prints nothing, the answer
    lost): a short body already on its way finishes and the stream closes cleanly. A long
    one is still cut short, as nginx's lingering close cuts an HTTP/1.1 body."""
    stream = request.stream
    body = request.body or RequestBody(stream, 0)  # refused before its body was looked at
    with trio.move_on_after(LINGER):
        try:
            await body.drain(LINGER_BYTES)
        except StreamReset:
            return


async def _answer(stream: Stream, error: MeshError) -> None:
    if stream.headers_sent:
        stream.reset(CANCEL)
        return
    headers, body = error.response()
    try:
        await stream.send_headers(headers)
        await stream.send_data(body, end_stream=True)
    except StreamReset:
        return
