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
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.protections import CachedResponse, Protections
from meshnode.actors.stats import UpstreamStats
from meshnode.errors import (
    BadRequest,
    ChaosAbort,
    CircuitOpen,
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
from meshnode.events import QueueFilling
from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.listener import Peer
from meshnode.net.overload import Overload
from meshnode.net.pool import UpstreamPool
from meshnode.net.stream import CANCEL, INTERNAL_ERROR, NO_ERROR, Stream, StreamReset, ensure_open
from meshnode.policy.models import ChaosPolicy, FallbackPolicy, Limits, UpstreamPolicy
from meshnode.policy.units import Address, Duration
from meshnode.proxy import fallback
from meshnode.proxy.attempt import AttemptFailed, attempt
from meshnode.proxy.body import RequestBody
from meshnode.proxy.headers import HeaderList, forwarded_request_headers
from meshnode.proxy.retry import head_condition, is_breaker_failure, may_resend, safe_to_repeat
from meshnode.proxy.retry import retry_after as retry_after_of
from meshnode.proxy.routing import RouteTable, authority_host
from meshnode.proxy.tunnel import Tunnel
from meshnode.resilience.core import backoff
from meshnode.resilience.core.faults import NO_FAULT, Fault, FaultPlan, decide
from meshnode.resilience.spool import AsyncSpool, SpoolError

log = logging.getLogger(__name__)

# What a request body may be kept up to for resending when no [retry] says otherwise:
# a request the upstream left unanswered as it recycled a connection is sent again.
DEFAULT_REPLAY_BUFFER = 64 * 1024
# How often one request is sent again for that (GOAWAY, REFUSED_STREAM, a stale
# connection) before it fails: each resend is free, so it must be bounded.
MAX_RESENDS = 3
# What x-meshnode-fault-abort and x-meshnode-fault-delay may ask for (a status a node may
# answer with: 1xx is no final answer; a delay no test needs longer).
FINAL_STATUSES = (200, 599)
MAX_HEADER_DELAY = 60.0

_ERROR_CONDITIONS = {
    UpstreamConnectFailure: "connect-failure",
    UpstreamReset: "reset",
    Timeout: "timeout",
}


class Request:
    """One request as it goes: what the steps share, and what its record will say."""

    __slots__ = (
        "authority",
        "body",
        "client_ip",
        "endpoint",
        "error",
        "group",
        "head_at",
        "headers",
        "method",
        "out_headers",
        "path",
        "peer",
        "request_id",
        "started",
        "stream",
        "tries",
        "tunnel",
    )

    def __init__(self, stream: Stream, peer: Peer) -> None:
        self.stream = stream
        self.peer = peer
        self.client_ip = peer.ip
        self.started = trio.current_time()
        self.headers: HeaderList = stream.headers or []
        self.method = self.path = self.authority = b""
        self.out_headers: HeaderList = []
        self.request_id: bytes | None = None
        self.body: RequestBody | None = None
        self.group: UpstreamGroup | None = None
        self.endpoint: Address | None = None  # the last try's
        self.tries = 0
        self.tunnel = stream.tunnel  # a WebSocket: bytes both ways once it is up
        self.head_at: float | None = None  # when the response head arrived
        self.error: str | None = None  # the mesh error reason, or "fallback:<kind>"


RequestObserver = Callable[[Request], None]


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
        self.limits = Limits()  # the node's [limits], swapped on reload
        self.overload = Overload()  # the node's, shared with its listeners
        self.tunnels: set[Tunnel] = set()  # WebSocket tunnels open now

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
            await _answer(stream, error)
        except StreamReset as reset:
            if reset.stream is not stream:
                stream.reset(INTERNAL_ERROR if reset.connection_lost else reset.code)
        except Exception:
            log.exception("request on stream %d failed", stream.id)
            stream.reset(INTERNAL_ERROR)
        # Answered while the client was still sending: RFC 9113 section 8.1 asks it to stop.
        stream.reset(NO_ERROR)
        group = request.group
        stats = group.stats if group is not None else self.unrouted
        stats.observe(stream.status_sent, trio.current_time() - request.started)
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
        headers = request.headers
        authority = path = method = b""
        for name, value in headers:
            if name == b":authority" or (name == b"host" and not authority):
                authority = value
            elif name == b":path":
                path = value
            elif name == b":method":
                method = value
        request.method, request.path, request.authority = method, path, authority
        if not authority:
            raise BadRequest("the request names no :authority or host")
        group = request.group = self._route(request)
        policy = group.policy
        request.out_headers, request.request_id = forwarded_request_headers(
            headers, request.client_ip, request.peer.identity
        )
        replay = policy.retry.buffer if policy.retry is not None else DEFAULT_REPLAY_BUFFER
        if request.tunnel:
            replay = 0  # a tunnel's bytes are not a body to send again
        request.body = None if stream.consume_end() else self._body(request, replay)
        try:
            await self._serve(request, group, policy)
        except MeshError as error:
            error.upstream = error.upstream or group.name
            error.request_id = request.request_id
            if policy.fallback is None or stream.headers_sent:
                raise
            if not fallback.applies(policy.fallback, error):
                raise
            if not await self._fall_back(request, group, policy, error):
                raise
            request.error = f"fallback:{policy.fallback.kind}"

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
        extra_headers: HeaderList | None = None,
    ) -> None:
        """Everything after routing: the protections, then the tries."""
        protections = group.protections
        now = trio.current_time()
        limiter = protections.rate_limiter
        if limiter is not None:
            key = request.client_ip
            if limiter.per_client:
                header = policy.rate_limit.client_header.encode()  # type: ignore[union-attr]
                key = next((v for n, v in request.headers if n == header), key)
                if request.peer.identity is not None:
                    key = request.peer.identity.encode()
            wait = limiter.check(key, now)
            if wait:
                group.stats.rate_limited += 1
                raise RateLimited(f"over {limiter.rate:g} requests a second", group.name, wait)
        if policy.chaos is not None:
            fault = _fault(policy.chaos, protections, request.headers)
            if fault.delay:
                with trio.CancelScope() as delaying:
                    request.stream.cancel_scope = delaying
                    await trio.sleep(fault.delay)
                ensure_open(request.stream, connection_dead=False)
            if fault.abort_status is not None:
                raise ChaosAbort("injected by [chaos]", group.name, fault.abort_status)

        core = group.breaker.core
        permit = None
        if core is not None:
            permit = core.admit(now)
            if permit is None:
                group.stats.breaker_rejected += 1
                since = now - core.state_since
                raise CircuitOpen(f"the circuit is {core.state.value} for {since:.1f}s", group.name)
        status, condition, finished = 0, None, False
        try:
            limit = policy.timeout.request or math.inf
            if request.tunnel:
                limit = policy.timeout.tunnel_lifetime
            status = await self._tries(request, group, policy, extra_headers or [], limit)
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
            if permit is not None and core is not None:
                if finished and policy.circuit_breaker is not None:
                    failed = is_breaker_failure(policy.circuit_breaker, status, condition)
                    end = trio.current_time()
                    duration = _outcome_time(request, end) - now
                    core.record(permit, failed=failed, duration=duration, now=end)
                else:
                    core.release(permit)

    async def _tries(
        self,
        request: Request,
        group: UpstreamGroup,
        policy: UpstreamPolicy,
        extra_headers: HeaderList,
        limit: float,
    ) -> int:
        """The retry loop: one try after another until one answers, none may follow, or
        the request's ``limit`` (seconds) is up.

        Each try runs in one cancel scope with the request's deadline, which is also the
        scope a reset by the caller cancels (the session cancels ``stream.cancel_scope``):
        the work stops at once. ``attempt`` moves that deadline to the per-try one until the
        response head arrives: one scope a try serves the request timeout, the per-try
        timeout and the caller's reset (a scope each cost a tenth of a request's CPU).
        """
        protections = group.protections
        now = trio.current_time()
        deadline = now + limit
        budget = protections.retry_budget
        if budget is not None:
            budget.record_request(now)
        per_try = policy.timeout.per_try or math.inf
        tunnel = None
        if request.tunnel:  # the request timeout bounds its opening, the idle limit the rest
            per_try = min(per_try, policy.timeout.request or math.inf)
            tunnel = Tunnel(policy.timeout.tunnel_idle, self.tunnels)
        capture = _capture_for(request, policy)
        connections = group.connections(self.trust_domain)
        tries = resends = 0
        avoid = None

        def judge(status: int, headers: HeaderList) -> None:
            """Refuse to relay a head the retry policy names, while a retry may follow, or
            one the fallback takes over (by the status, or once retries are exhausted)."""
            request.head_at = trio.current_time()
            condition = delay = None
            if policy.retry is not None:
                condition = head_condition(status, headers, policy.retry.retry_on)
                if condition is not None:
                    delay = self._retry_delay(condition, headers, tries, request, policy, group)
            if delay is None and not (
                (condition is not None and _fallback_on_exhausted(policy))
                or (status >= 400 and fallback.on_status(policy.fallback, status))
            ):
                return
            error = UpstreamFailed(f"the upstream answered {status} after {tries} tries")
            error.status_seen = status
            raise AttemptFailed(condition or str(status), error, headers=headers, retry_delay=delay)

        session = _session_key(request, policy)
        counts = group.stats.tries
        delay = 0.0
        resend: str | None = None  # why the last try is sent again, free of charge
        while True:
            failed: AttemptFailed | None = None
            with trio.CancelScope(deadline=deadline) as scope:
                request.stream.cancel_scope = scope
                ensure_open(request.stream, connection_dead=False)
                if delay:
                    await trio.sleep(delay)
                if resend is None:
                    tries += 1
                    counts["total"] += 1
                    if tries == 2:
                        counts["retried_requests"] += 1
                resend = None
                endpoint, load = await group.acquire(avoid, request.client_ip, session)
                request.tries += 1
                request.endpoint = endpoint.address
                started = trio.current_time()
                try_failed = True  # until the try relays an answer that is not a failure
                try:
                    status, head = await attempt(
                        self.pool,
                        endpoint,
                        request.out_headers,
                        request.body,
                        request.stream,
                        scope,
                        per_try=per_try,
                        judge=judge,
                        extra_headers=extra_headers,
                        tap=capture,
                        connections=connections,
                        tunnel=tunnel,
                    )
                    try_failed = status >= 500
                    if tries > 1 and not try_failed:
                        counts["recovered"] += 1
                    if capture is not None and status == 200 and not capture.overflow:
                        _remember(group.protections, request.path, head, capture)
                    return status
                except AttemptFailed as failure:
                    failed = failure
                    resend = _resend_reason(failure, request, resends)
                finally:
                    if resend is not None:
                        group.release_unjudged(load)
                    else:
                        group.release(load, trio.current_time() - started, failed=try_failed)
            avoid = endpoint.address
            if resend is not None:
                resends += 1
                group.stats.resent[resend] += 1
                delay = 0.0
                continue
            if failed is None:  # the scope caught its cancellation
                failed = _cancelled_try(request, group, scope, deadline, limit, per_try)
            delay = self._delay_after(failed, tries, request, policy, group)

    def _delay_after(
        self,
        failed: AttemptFailed,
        tries: int,
        request: Request,
        policy: UpstreamPolicy,
        group: UpstreamGroup,
    ) -> float:
        """Seconds to wait before the try after ``failed``; its error, raised, when no try
        may follow (marked ``retries_exhausted`` when the retry policy named it)."""
        delay = failed.retry_delay  # decided by the judge already, for a refused head
        if delay is None and not isinstance(failed.error, UpstreamFailed):
            delay = self._retry_delay(
                failed.condition, failed.headers, tries, request, policy, group
            )
        if delay is None:
            exhausted = policy.retry is not None and failed.condition in policy.retry.retry_on
            failed.error.retries_exhausted = exhausted
            if exhausted:
                group.stats.retries["exhausted"] += 1
            raise failed.error
        group.stats.retries["retried"] += 1
        return delay

    def _retry_delay(
        self,
        condition: str,
        response_headers: HeaderList,
        tries: int,
        request: Request,
        policy: UpstreamPolicy,
        group: UpstreamGroup,
    ) -> float | None:
        """Seconds to wait before the next try, or None when there is to be no next try."""
        protections = group.protections
        body = request.body
        if body is not None and not body.replayable:
            return None
        retry = policy.retry
        if retry is None or condition not in retry.retry_on or tries > retry.max_retries:
            return None
        if not may_resend(condition, request.method, request.headers, retry):
            return None
        budget = protections.retry_budget
        if budget is not None and not budget.try_retry(trio.current_time()):
            group.stats.retries["budget-exhausted"] += 1
            return None
        if condition in ("429", "503"):
            asked = retry_after_of(response_headers)
            if asked is not None:
                return min(asked, retry.max_delay)
        return backoff.delay(
            tries,
            retry.backoff,
            retry.initial_delay,
            retry.max_delay,
            multiplier=retry.multiplier,
            jitter=retry.jitter,
            rng=protections.rng,
        )

    async def _enqueue(self, request: Request, group: UpstreamGroup, plan: FallbackPolicy) -> bool:
        if self.queue is None:
            return False
        return await _enqueue_request(self.queue, request, group, plan)

    async def _fall_back(
        self, request: Request, group: UpstreamGroup, policy: UpstreamPolicy, error: MeshError
    ) -> bool:
        """Answer with the configured fallback; False if it has nothing to give."""
        plan = policy.fallback
        assert plan is not None
        if plan.kind == "static":
            await fallback.answer_static(request.stream, plan)
        elif plan.kind == "stale-cache":
            cache = group.protections.stale_cache
            if cache is None or request.method != b"GET":
                return False
            if not await fallback.answer_stale(request.stream, cache, request.path, plan.age_limit):
                return False
        elif plan.kind == "queue":
            if not await self._enqueue(request, group, plan):
                return False
        else:
            target = self.upstreams.get(plan.upstream or "")
            body = request.body
            if target is None or (body is not None and not body.replayable):
                return False
            await self._serve(
                request, target, target.policy, [fallback.fallback_header("upstream")]
            )
        log.info("fallback %s for %s (%s): %s", plan.kind, group.name, error.reason, error.detail)
        group.stats.count_fallback(plan.kind)
        return True


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


async def _enqueue_request(
    queue: AsyncSpool, request: Request, group: UpstreamGroup, plan: FallbackPolicy
) -> bool:
    """Store the request durably and answer 202; False when it may not or cannot be queued."""
    method = request.method.decode("latin-1")
    path = request.path.decode("latin-1")
    if method not in plan.methods or (plan.paths and not path.startswith(tuple(plan.paths))):
        return False
    body = b"" if request.body is None else await request.body.read_all(plan.max_body)
    if body is None:
        return False
    key = next((v.decode("latin-1") for n, v in request.headers if n == b"idempotency-key"), None)
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.out_headers
        if not name.startswith(b":") and name != b"idempotency-key"
    ]
    try:
        entry_id, stored_key, depth = await queue.run(
            queue.spool.enqueue,
            group.name,
            method,
            path,
            headers,
            body,
            idempotency_key=key,
            max_depth=plan.max_depth,
            max_bytes=plan.max_bytes,
        )
    except SpoolError as exc:
        group.stats.queue["refused"] += 1
        log.warning("queue fallback of %s refused a request: %s", group.name, exc)
        return False
    group.stats.queue["queued"] += 1
    if depth == 1:
        group.bus.publish(QueueFilling(upstream=group.name, id=entry_id))
    answer = json.dumps(
        {"status": "queued", "id": entry_id, "idempotency_key": stored_key}
    ).encode()
    headers_out = [
        (b":status", b"202"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(answer)).encode()),
        (b"idempotency-key", stored_key.encode()),
        fallback.fallback_header("queue"),
    ]
    try:
        await request.stream.send_headers(headers_out)
        await request.stream.send_data(answer, end_stream=True)
    except StreamReset:
        pass  # stored all the same: it will be delivered
    return True


def _session_key(request: Request, policy: UpstreamPolicy) -> bytes | None:
    """The client's session-affinity key: the named header's value, or the named cookie's."""
    affinity = policy.balancer.session_affinity
    if affinity is None:
        return None
    if affinity.header is not None:
        wanted = affinity.header.lower().encode()
        return next((value for name, value in request.headers if name == wanted), None)
    if affinity.cookie is not None:
        prefix = affinity.cookie.encode() + b"="
        for name, value in request.headers:
            if name == b"cookie":
                for crumb in value.split(b";"):
                    stripped = crumb.strip()
                    if stripped.startswith(prefix):
                        return stripped[len(prefix) :]
    return None


def _resend_reason(failed: AttemptFailed, request: Request, resends: int) -> str | None:
    """Why a try the upstream left unanswered as it recycled its connection is sent
    again at once, free of the retry policy, its budget and the breaker: a stream it
    never processed (RFC 9113 8.7), whatever the method, and one it may have seen but
    dropped with the connection it announced it was closing (or had closed as idle),
    when the request is safe to repeat (RFC 9110 9.2.2). None when it is not, and when
    it cannot be: the ``MAX_RESENDS`` were spent (the failure's detail then says so), or
    the body outgrew its replay buffer (the body is named in the detail)."""
    reset = failed.reset
    if reset is None or reset.lifecycle is None:
        return None
    if not reset.refused and not safe_to_repeat(request.method, request.headers):
        return None
    body = request.body
    error = failed.error
    if body is not None and not body.replayable:
        error.detail += "; not sent again: its body outgrew the replay buffer ([retry] buffer)"
        return None
    if resends >= MAX_RESENDS:
        error.detail += f"; not sent again: already sent again {MAX_RESENDS} times"
        return None
    return reset.lifecycle


def _cancelled_try(
    request: Request,
    group: UpstreamGroup,
    scope: trio.CancelScope,
    deadline: float,
    limit: float,
    per_try: float,
) -> AttemptFailed:
    """Why a try's scope was cancelled: the caller's reset and the request's deadline end
    the request (raised); the per-try deadline (the scope's still sooner than the
    request's) fails the try alone, and a retry may follow."""
    if request.stream.error is not None:
        raise request.stream.error
    if trio.current_time() < deadline and scope.deadline < deadline:
        return AttemptFailed(
            "timeout", Timeout(f"no response head within the per-try {per_try:g}s")
        )
    if request.tunnel and request.head_at is not None:
        raise TunnelLimit(f"open for its tunnel_lifetime of {limit:g}s", group.name)
    raise Timeout(f"no complete response within {limit:g}s", group.name)


def _outcome_time(request: Request, end: float) -> float:
    """When the request's outcome was known: its ``end``, or for a tunnel its opening (a
    tunnel open for an hour is not a slow call)."""
    if request.tunnel and request.head_at is not None:
        return request.head_at
    return end


def _fallback_on_exhausted(policy: UpstreamPolicy) -> bool:
    return policy.fallback is not None and "retries-exhausted" in policy.fallback.on


def _capture_for(request: Request, policy: UpstreamPolicy) -> fallback.BodyCapture | None:
    plan = policy.fallback
    if plan is None or plan.kind != "stale-cache" or request.method != b"GET":
        return None
    return fallback.BodyCapture()


def _remember(
    protections: Protections, path: bytes, head: HeaderList, capture: fallback.BodyCapture
) -> None:
    """Keep a successful GET answer for the stale-cache fallback."""
    if protections.stale_cache is not None:
        protections.stale_cache.put(
            path,
            CachedResponse(
                strip_hop_by_hop(head, request=False),
                b"".join(capture.chunks),
                trio.current_time(),
            ),
        )


@functools.lru_cache(maxsize=256)
def _plan_of(chaos: ChaosPolicy) -> FaultPlan:
    """The fault plan of a [chaos] policy (policies are frozen: one plan each)."""
    return FaultPlan(chaos.abort_percent, chaos.abort_status, chaos.delay_percent, chaos.delay)


def _fault(chaos: ChaosPolicy, protections: Protections, headers: HeaderList) -> Fault:
    """This request's fault: the policy's draw, or what its fault headers ask for when
    ``header_faults`` is on. A header the node could not honour (a status that is no final
    answer, a delay that is no duration or over ``MAX_HEADER_DELAY``) is the caller's
    mistake, answered 400: relayed, an invalid status broke the caller's stream."""
    fault = decide(_plan_of(chaos), protections.rng)
    if not chaos.header_faults:
        return fault
    for name, value in headers:
        if name == b"x-meshnode-fault-abort":
            status = int(value) if value.isdigit() else 0
            if not FINAL_STATUSES[0] <= status <= FINAL_STATUSES[1]:
                raise BadRequest(
                    f"x-meshnode-fault-abort: {value.decode(errors='replace')!r} is not a "
                    f"status from {FINAL_STATUSES[0]} to {FINAL_STATUSES[1]}"
                )
            fault = Fault(fault.delay, status)
        elif name == b"x-meshnode-fault-delay":
            try:
                delay = Duration.parse(value.decode(errors="replace"))
            except ValueError:
                delay = None
            if delay is None or delay > MAX_HEADER_DELAY:
                raise BadRequest(
                    f"x-meshnode-fault-delay: {value.decode(errors='replace')!r} is not a "
                    f'duration up to {Duration(MAX_HEADER_DELAY)} (like "300ms")'
                )
            fault = Fault(delay, fault.abort_status)
    return fault if fault != NO_FAULT else NO_FAULT


async def _answer(stream: Stream, error: MeshError) -> None:
    log.info("stream %d: %s (%s): %s", stream.id, error.reason, error.upstream, error.detail)
    if stream.headers_sent:
        stream.reset(CANCEL)
        return
    headers, body = error.response()
    try:
        await stream.send_headers(headers)
        await stream.send_data(body, end_stream=True)
    except StreamReset:
        return
