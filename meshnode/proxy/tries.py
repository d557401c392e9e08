"""The retry loop: one request's tries against one upstream, until one answers, none may
follow, or the request's time is up.

Each try runs in one cancel scope with the request's deadline, which is also the scope a
reset by the caller cancels (the session cancels ``stream.cancel_scope``): the work stops
at once. ``attempt`` moves that deadline to the per-try one until the response head
arrives: one scope a try serves the request timeout, the per-try timeout and the caller's
reset (a scope each cost a tenth of a request's CPU).

After a failed try, one of three things follows:

- a **resend**, at once and free of the retry policy, its budget and the breaker, when the
  upstream left the try unanswered as it recycled its connection (``resend_reason``);
- a **retry**, after a backoff, when ``[retry]`` names the failure, the request may be
  repeated, its body is still replayable, the budget allows, and it can finish before the
  request's deadline: a retry that would have less time left than the failed try took is
  skipped, and the caller gets the last answer at once (``x-meshnode-retry-skipped:
  deadline``) instead of a 504 later (``_retry_delay``);
- the failure, raised, marked ``retries_exhausted`` when the retry policy named it.

The rules that need no state (which outcomes a policy names, which requests are safe to
repeat) are in retry.py.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.protections import CachedResponse
from meshnode.errors import RETRY_SKIPPED, Timeout, TunnelLimit, UpstreamFailed
from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.pool import UpstreamConnections, UpstreamPool
from meshnode.net.stream import ensure_open
from meshnode.policy.models import UpstreamPolicy
from meshnode.policy.units import Address
from meshnode.proxy import fallback
from meshnode.proxy.attempt import AttemptFailed, attempt
from meshnode.proxy.headers import HeaderList
from meshnode.proxy.request import Request, format_grpc_timeout
from meshnode.proxy.retry import head_condition, may_resend, resend_reason
from meshnode.proxy.retry import retry_after as retry_after_of
from meshnode.proxy.tunnel import Tunnel
from meshnode.resilience.core import backoff

# How often one request is sent again for a recycled connection (GOAWAY, REFUSED_STREAM,
# a stale connection) before it fails: each resend is free, so it must be bounded.
MAX_RESENDS = 3


class Tries:
    """One request's tries against one upstream, under the policy it started with: the
    context every try shares (deadlines, counts, the endpoint to avoid next)."""

    def __init__(
        self,
        request: Request,
        group: UpstreamGroup,
        policy: UpstreamPolicy,
        *,
        pool: UpstreamPool,
        connections: UpstreamConnections,
        limit: float,
        tunnels: set[Tunnel],
        extra_headers: HeaderList,
    ) -> None:
        """``limit``: seconds the whole loop may take (the request timeout, or a tunnel's
        lifetime); ``tunnels``: where a WebSocket tunnel registers while it is open;
        ``extra_headers``: added to the response relayed (a fallback's mark, a skipped
        retry's reason); this request's own list."""
        self.request = request
        self.group = group
        self.policy = policy
        self.pool = pool
        self.connections = connections
        self.limit = limit
        self.extra_headers = extra_headers
        self.deadline = trio.current_time() + limit
        self.per_try = policy.timeout.per_try or math.inf
        self.tunnel = None
        if request.tunnel:  # the request timeout bounds its opening, the idle limit the rest
            self.per_try = min(self.per_try, policy.timeout.request or math.inf)
            self.tunnel = Tunnel(policy.timeout.tunnel_idle, tunnels)
        self.capture = _capture_for(request, policy)
        self.tries = 0  # tries the retry policy counts (resends are not)
        self.head_status = 0  # the status of the current try's response head, once it came
        self.try_started = 0.0
        self.skipped: str | None = None  # why the last retry the policy allowed was skipped
        self.resends = 0

    async def run(self) -> int:
        """Try until a try relays an answer (its status is returned); raise the error of
        the last try when no other may follow."""
        request, group = self.request, self.group
        budget = group.protections.retry_budget
        if budget is not None:
            budget.record_request(trio.current_time())
        session = request.session_key(self.policy)
        counts = group.stats.tries
        avoid = None
        delay = 0.0
        resend: str | None = None  # why the last try is sent again, free of charge
        while True:
            failed: AttemptFailed | None = None
            with trio.CancelScope(deadline=self.deadline) as scope:
                request.stream.cancel_scope = scope
                ensure_open(request.stream, connection_dead=False)
                if delay:
                    await trio.sleep(delay)
                if resend is None:
                    self.tries += 1
                    counts["total"] += 1
                    if self.tries == 2:
                        counts["retried_requests"] += 1
                resend = None
                endpoint, load = await group.picker.acquire(avoid, request.client_ip, session)
                request.tries += 1
                request.endpoint = endpoint.address
                started = self.try_started = trio.current_time()
                try_failed = True  # until the try relays an answer that is not a failure
                headers, span = self._headers_for(endpoint.address)
                trace = request.trace
                status, outcome = 0, None  # what the try's span will say
                self.head_status = 0
                try:
                    status, head = await attempt(
                        self.pool,
                        endpoint,
                        headers,
                        request.body,
                        request.stream,
                        scope,
                        per_try=self.per_try,
                        judge=self._judge,
                        extra_headers=self.extra_headers,
                        tap=self.capture,
                        connections=self.connections,
                        tunnel=self.tunnel,
                    )
                    try_failed = status >= 500
                    if self.tries > 1 and not try_failed:
                        counts["recovered"] += 1
                    if status == 200:
                        self._remember(head)
                    return status
                except AttemptFailed as failure:
                    failed, outcome = failure, failure.condition
                    resend = resend_reason(failure.reset, request.method, request.headers)
                    resend = self._within_resend_limits(failure, resend)
                finally:
                    if resend is not None:
                        group.picker.release_unjudged(load)
                    else:
                        group.picker.release(load, trio.current_time() - started, failed=try_failed)
                    if trace is not None and span is not None:
                        seen = status or self.head_status  # a head, if the body went amiss
                        trace.end_try(span, seen, outcome or (None if seen else "no-answer"))
            avoid = endpoint.address
            if resend is not None:
                self.resends += 1
                group.stats.resent[resend] += 1
                if trace is not None:
                    trace.event("resend", {"meshnode.resend.reason": resend})
                delay = 0.0
                continue
            if failed is None:  # the scope caught its cancellation
                failed = self._cancelled(scope)
            delay = self._delay_after(failed)

    def _headers_for(self, address: Address) -> tuple[HeaderList, Any]:
        """The request's headers for one try, and the try's span (None when not traced):
        the try's own trace context goes with it, and a gRPC call's time left."""
        request = self.request
        headers, span = request.out_headers, None
        trace = request.trace
        if trace is not None:
            sent = trace.sent
            if trace.span is not None:
                span, sent = trace.start_try(
                    f"{request.method.decode('latin-1')} {self.group.name}",
                    self._try_attributes(address),
                )
            headers = [*headers, *(sent or ())]
        if request.grpc:
            headers = self._with_time_left(headers)
        return headers, span

    def _with_time_left(self, headers: HeaderList) -> HeaderList:
        """``headers`` with ``grpc-timeout`` set to the time the request has left (replacing
        the caller's, which counted from when it sent the request)."""
        if self.deadline == math.inf:
            return headers
        kept = [(name, value) for name, value in headers if name != b"grpc-timeout"]
        left = self.deadline - trio.current_time()
        return [*kept, (b"grpc-timeout", format_grpc_timeout(left))]

    def _try_attributes(self, address: Address) -> dict[str, object]:
        """What a try's span says of it (OpenTelemetry's HTTP client conventions)."""
        attributes: dict[str, object] = {
            "http.request.method": self.request.method.decode("latin-1"),
            "server.address": address.host,
            "server.port": address.port,
            "meshnode.upstream": self.group.name,
        }
        if self.tries > 1:
            attributes["http.request.resend_count"] = self.tries - 1
        return attributes

    def _judge(self, status: int, headers: HeaderList) -> None:
        """Refuse to relay a head the retry policy names, while a retry may follow, or one
        the fallback takes over (by the status, or once retries are exhausted)."""
        self.request.head_at = trio.current_time()
        self.head_status = status
        policy = self.policy
        condition = delay = None
        if policy.retry is not None:
            condition = head_condition(status, headers, policy.retry.retry_on)
            if condition is not None:
                delay = self._retry_delay(condition, headers)
        if delay is None and not (
            (condition is not None and fallback.on_exhausted(policy.fallback))
            or (status >= 400 and fallback.on_status(policy.fallback, status))
        ):
            if self.skipped is not None:  # the request's own list: the answer says why
                self.extra_headers.append((RETRY_SKIPPED, self.skipped.encode()))
            return
        error = UpstreamFailed(f"the upstream answered {status} after {self.tries} tries")
        error.status_seen = status
        raise AttemptFailed(condition or str(status), error, headers=headers, retry_delay=delay)

    def _within_resend_limits(self, failed: AttemptFailed, reason: str | None) -> str | None:
        """``reason``, unless the request cannot be sent again: the body outgrew its replay
        buffer, or the ``MAX_RESENDS`` were spent (the failure's detail then says which)."""
        if reason is None:
            return None
        body = self.request.body
        if body is not None and not body.replayable:
            failed.error.detail += (
                "; not sent again: its body outgrew the replay buffer ([retry] buffer)"
            )
            return None
        if self.resends >= MAX_RESENDS:
            failed.error.detail += f"; not sent again: already sent again {MAX_RESENDS} times"
            return None
        return reason

    def _cancelled(self, scope: trio.CancelScope) -> AttemptFailed:
        """Why a try's scope was cancelled: the caller's reset and the request's deadline
        end the request (raised); the per-try deadline (the scope's still sooner than the
        request's) fails the try alone, and a retry may follow."""
        request = self.request
        if request.stream.error is not None:
            raise request.stream.error
        if trio.current_time() < self.deadline and scope.deadline < self.deadline:
            return AttemptFailed(
                "timeout", Timeout(f"no response head within the per-try {self.per_try:g}s")
            )
        if request.tunnel and request.head_at is not None:
            raise TunnelLimit(f"open for its tunnel_lifetime of {self.limit:g}s", self.group.name)
        raise Timeout(f"no complete response within {self.limit:g}s", self.group.name)

    def _delay_after(self, failed: AttemptFailed) -> float:
        """Seconds to wait before the try after ``failed``; its error, raised, when no try
        may follow (marked ``retries_exhausted`` when the retry policy named it)."""
        delay = failed.retry_delay  # decided by the judge already, for a refused head
        if delay is None and not isinstance(failed.error, UpstreamFailed):
            delay = self._retry_delay(failed.condition, failed.headers)
        stats = self.group.stats
        if delay is None:
            retry = self.policy.retry
            exhausted = retry is not None and failed.condition in retry.retry_on
            failed.error.retries_exhausted = exhausted
            failed.error.retry_skipped = self.skipped
            if exhausted:
                stats.retries["exhausted"] += 1
            raise failed.error
        stats.retries["retried"] += 1
        trace = self.request.trace
        if trace is not None:
            trace.event(
                "retry",
                {
                    "meshnode.retry.reason": failed.condition,
                    "meshnode.retry.delay_ms": round(delay * 1000, 3),
                    "meshnode.retry.attempt": self.tries,
                },
            )
        return delay

    def _retry_delay(self, condition: str, response_headers: HeaderList) -> float | None:
        """Seconds to wait before the next try, or None when there is to be no next try."""
        request = self.request
        body = request.body
        if body is not None and not body.replayable:
            return None
        retry = self.policy.retry
        if retry is None or condition not in retry.retry_on or self.tries > retry.max_retries:
            return None
        if not may_resend(condition, request.method, request.headers, retry):
            return None
        protections = self.group.protections
        budget = protections.retry_budget
        if budget is not None and not budget.try_retry(trio.current_time()):
            self.group.stats.retries["budget-exhausted"] += 1
            return None
        delay = None
        if condition in ("429", "503"):
            asked = retry_after_of(response_headers)
            if asked is not None:
                delay = min(asked, retry.max_delay)
        if delay is None:
            delay = backoff.delay(
                self.tries,
                retry.backoff,
                retry.initial_delay,
                retry.max_delay,
                multiplier=retry.multiplier,
                jitter=retry.jitter,
                rng=protections.rng,
            )
        return None if self._too_late(delay) else delay

    def _too_late(self, delay: float) -> bool:
        """Whether a retry after ``delay`` would have less time left than the failed try
        took: the best evidence of how long the next will take. A fast failure (a refused
        connection) is retried; one that took most of the budget is not, and the caller
        gets its answer now rather than a 504 at the deadline."""
        now = trio.current_time()
        if self.deadline - now - delay >= now - self.try_started:
            return False
        self.skipped = "deadline"
        self.group.stats.retries["deadline-skipped"] += 1
        return True

    def _remember(self, head: HeaderList) -> None:
        """Keep a successful GET answer for the stale-cache fallback."""
        capture = self.capture
        cache = self.group.protections.stale_cache
        if capture is None or capture.overflow or cache is None:
            return
        cache.put(
            self.request.path,
            CachedResponse(
                strip_hop_by_hop(head, request=False),
                b"".join(capture.chunks),
                trio.current_time(),
            ),
        )


def _capture_for(request: Request, policy: UpstreamPolicy) -> fallback.BodyCapture | None:
    plan = policy.fallback
    if plan is None or plan.kind != "stale-cache" or request.method != b"GET":
        return None
    return fallback.BodyCapture()
