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
from collections.abc import Coroutine
from typing import Any

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.picking import EndpointLoad
from meshnode.actors.protections import CachedResponse
from meshnode.errors import RETRY_SKIPPED, Timeout, TunnelLimit, UpstreamFailed
from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.pool import UpstreamConnections, UpstreamPool
from meshnode.net.stream import ResponseHead, ensure_open
from meshnode.policy.models import Endpoint, HedgePolicy, UpstreamPolicy
from meshnode.policy.units import Address
from meshnode.proxy import fallback
from meshnode.proxy.attempt import AttemptFailed, Exchange, attempt
from meshnode.proxy.headers import HeaderList
from meshnode.proxy.request import Request, format_grpc_timeout
from meshnode.proxy.retry import IDEMPOTENT_METHODS, head_condition, may_resend, resend_reason
from meshnode.proxy.retry import retry_after as retry_after_of
from meshnode.proxy.tunnel import Tunnel
from meshnode.resilience.core import backoff

# How often one request is sent again for a recycled connection (GOAWAY, REFUSED_STREAM,
# a stale connection) before it fails: each resend is free, so it must be bounded.
MAX_RESENDS = 3
HEDGE_LOST = "hedge-lost"  # a try cancelled because another answered first


class Tries:
    """One request's tries against one upstream, under the policy it started with: the
    context every try shares (deadlines, counts, the endpoint to avoid next)."""

    __slots__ = (
        "capture",
        "connections",
        "deadline",
        "extra_headers",
        "group",
        "head_status",
        "hedge",
        "limit",
        "per_try",
        "policy",
        "pool",
        "request",
        "resends",
        "skipped",
        "started",
        "tries",
        "try_started",
        "tunnel",
    )

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
        now: float,
    ) -> None:
        """``limit``: seconds the whole loop may take from ``now`` (the request timeout, or
        a tunnel's lifetime); ``tunnels``: where a WebSocket tunnel registers while it is open;
        ``extra_headers``: added to the response relayed (a fallback's mark, a skipped
        retry's reason); this request's own list."""
        self.request = request
        self.group = group
        self.policy = policy
        self.pool = pool
        self.connections = connections
        self.limit = limit
        self.extra_headers = extra_headers
        self.started = now
        self.deadline = now + limit
        self.per_try = policy.timeout.per_try or math.inf
        self.tunnel = None
        if request.tunnel:  # the request timeout bounds its opening, the idle limit the rest
            self.per_try = min(self.per_try, policy.timeout.request or math.inf)
            self.tunnel = Tunnel(policy.timeout.tunnel_idle, tunnels)
        self.capture = _capture_for(request, policy)
        self.hedge = _hedge_for(request, policy)
        self.tries = 0  # tries the retry policy counts (resends are not)
        self.head_status = 0  # the status of the current try's response head, once it came
        self.try_started = 0.0
        self.skipped: str | None = None  # why the last retry the policy allowed was skipped
        self.resends = 0

    async def run(self) -> int:
        """Try until a try relays an answer (its status is returned); raise the error of
        the last try when no other may follow.

        A try that needs no wait (no backoff, a free endpoint slot, no hedge to race) opens
        its scope with its own deadline already, the common case; one that waits opens it
        with the request's, and its exchange moves it to the try's once the wait is over."""
        request, group = self.request, self.group
        stream, picker = request.stream, group.picker
        budget = group.protections.retry_budget
        if budget is not None:
            budget.record_request(self.started)
        session = request.session_key(self.policy)
        counts = group.stats.tries
        avoid = None
        delay = 0.0
        now = self.started
        resend: str | None = None  # why the last try is sent again, free of charge
        while True:
            failed: AttemptFailed | None = None
            ensure_open(stream, connection_dead=False)
            taken = None if delay else picker.take(avoid, request.client_ip, session, now)
            deadline = self.deadline
            if taken is not None and self.hedge is None:
                deadline = min(deadline, now + self.per_try)
            with trio.CancelScope(deadline=deadline) as scope:
                stream.cancel_scope = scope
                if taken is None:
                    if delay:
                        await trio.sleep(delay)
                    taken = await picker.acquire(avoid, request.client_ip, session)
                    now = trio.current_time()
                if resend is None:
                    self.tries += 1
                    counts["total"] += 1
                    if self.tries == 2:
                        counts["retried_requests"] += 1
                resend = None
                endpoint, load = taken
                first = self._begin(endpoint, load, scope, now)
                self.try_started = now
                try:
                    if self.hedge is not None:
                        return await self._race(first)
                    return await self._settled(first, attempt(first))
                except AttemptFailed as failure:
                    failed, resend = failure, failure.resend
            avoid = endpoint.address
            now = trio.current_time()
            if resend is not None:
                self.resends += 1
                group.stats.resent[resend] += 1
                if request.trace is not None:
                    request.trace.event("resend", {"meshnode.resend.reason": resend})
                delay = 0.0
                continue
            if failed is None:  # the scope caught its cancellation
                failed = self._cancelled(scope)
            delay = self._delay_after(failed)

    def _begin(
        self, endpoint: Endpoint, load: EndpointLoad, scope: trio.CancelScope, now: float
    ) -> Exchange:
        """A try on ``endpoint``, whose slot ``load`` holds, starting ``now``: its exchange
        and its span."""
        request = self.request
        request.tries += 1
        request.endpoint = endpoint.address
        headers, span = self._headers_for(endpoint.address)
        return Exchange(
            self.pool,
            endpoint,
            headers,
            request.body,
            request.stream,
            scope,
            started=now,
            deadline=self.deadline,
            per_try=self.per_try,
            load=load,
            span=span,
            judge=self._judge,
            extra_headers=self.extra_headers,
            tap=self.capture,
            connections=self.connections,
            tunnel=self.tunnel,
        )

    async def _settled(
        self, one: Exchange, answer: Coroutine[Any, Any, tuple[int, HeaderList]]
    ) -> int:
        """Await the answer ``one`` relays (``answer``) and settle the try: its slot, its
        span, the counts."""
        status, outcome, failed = 0, None, True  # until it relays an answer that is no failure
        resend: str | None = None
        try:
            status, head = await answer
            failed = status >= 500
            if self.tries > 1 and not failed:
                self.group.stats.tries["recovered"] += 1
            if status == 200 and self.capture is not None:
                self._remember(head)
            return status
        except AttemptFailed as failure:
            outcome, resend = failure.condition, self._resend_for(failure)
            raise
        finally:
            one.close()
            self._end(one, status or self.head_status, outcome, failed=failed, unjudged=resend)

    def _end(
        self, one: Exchange, status: int, outcome: str | None, *, failed: bool, unjudged: str | None
    ) -> None:
        """``one`` ended: its endpoint's slot back (with its latency and whether it failed,
        unless it was left unanswered by a recycled connection), its span ended."""
        one.ended = True
        picker = self.group.picker
        if unjudged is not None:
            picker.release_unjudged(one.load)
        else:
            now = trio.current_time()
            picker.release(one.load, now - one.started, failed=failed, now=now)
        trace = self.request.trace
        if trace is None or one.span is None:
            return
        if outcome == HEDGE_LOST:
            trace.end_lost_try(one.span)
        else:
            trace.end_try(one.span, status, outcome or (None if status else "no-answer"))

    def _resend_for(self, failure: AttemptFailed) -> str | None:
        """Why ``failure``'s request goes again at once, free (kept on it), or None."""
        request = self.request
        reason = resend_reason(failure.reset, request.method, request.headers)
        failure.resend = self._within_resend_limits(failure, reason)
        return failure.resend

    # -- hedging: more than one try at once ----------------------------------------

    async def _race(self, first: Exchange) -> int:
        """``first`` and, each time the hedge delay passes without a response head, a hedge
        on another endpoint (up to ``max_hedges``): the first head the policy would relay
        wins and the others are cancelled (RST_STREAM CANCEL). A head the policy would
        refuse (a retry or a fallback would follow) waits as the spare, relayed (and so
        judged) only if every other try fails; ``AttemptFailed`` when all fail.

        Until the delay passes, ``first`` runs in this task, under a deadline: most tries
        answer in time, and a race's nursery, task and channel would cost them a fifth
        more. Only then does it go on (the request already sent, its head awaited) beside
        the hedges."""
        hedge = self.hedge
        assert hedge is not None
        delay = self.group.protections.hedge_delay()
        try_deadline = first.started + self.per_try
        try:
            with trio.CancelScope(deadline=min(first.started + delay, try_deadline)) as waiting:
                head = await first.head(None)
        except AttemptFailed as alone:
            self._end_contender(first, alone)
            raise
        except BaseException:  # the request's deadline, or the caller gone
            first.close()
            self._end(first, 0, None, failed=True, unjudged=None)
            raise
        if not waiting.cancelled_caught:
            return await self._settled(first, first.relay(head))
        if trio.current_time() >= try_deadline:
            timed_out = _per_try_timeout(self.per_try)
            self._end_contender(first, timed_out)
            raise timed_out
        send, results = trio.open_memory_channel[tuple[Exchange, ResponseHead | AttemptFailed]](
            math.inf
        )
        contenders = [first]
        winner: tuple[Exchange, ResponseHead] | None = None
        spare: tuple[Exchange, ResponseHead] | None = None
        failure: AttemptFailed | None = None
        raced = False  # the race came to an end (not an exception, nor the deadline)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._contend, first, send)
                running = 1
                hedge_at = trio.current_time()  # the delay has passed already
                while running:
                    with trio.move_on_at(hedge_at):
                        one, outcome = await results.receive()
                        running -= 1
                        if isinstance(outcome, AttemptFailed):
                            failure = outcome
                            self._end_contender(one, outcome)
                        elif running and spare is None and self._refusable(outcome):
                            spare = (one, outcome)
                        elif running and self._refusable(outcome):
                            self._end_contender(one, None, status=outcome.status)
                        else:
                            winner = (one, outcome)
                            break
                        continue
                    extra = self._hedge(contenders[-1])
                    if extra is not None:
                        contenders.append(extra)
                        nursery.start_soon(self._contend, extra, send)
                        running += 1
                    more = extra is not None and len(contenders) <= hedge.max_hedges
                    hedge_at = trio.current_time() + delay if more else math.inf
                nursery.cancel_scope.cancel()
            raced = True
        finally:
            winner = (winner or spare) if raced else None
            for one in contenders:
                if not one.ended and (winner is None or one is not winner[0]):
                    one.close()
                    lost = winner is not None
                    why = HEDGE_LOST if lost else None
                    self._end(one, 0, why, failed=not lost, unjudged=None)
        if winner is None:
            assert failure is not None
            raise failure
        one, head = winner
        if one is not first:
            self.group.stats.hedges["won"] += 1
        self.try_started = one.started
        self.request.endpoint = one.endpoint.address  # the access log names the one relayed
        return await self._settled(one, one.relay(head))

    async def _contend(
        self,
        one: Exchange,
        results: trio.MemorySendChannel[tuple[Exchange, ResponseHead | AttemptFailed]],
    ) -> None:
        """Run ``one`` up to its response head, within its per-try timeout; report it."""
        outcome: ResponseHead | AttemptFailed = _per_try_timeout(self.per_try)
        with trio.CancelScope(deadline=one.started + self.per_try):
            try:
                outcome = await one.head(None)
            except AttemptFailed as failure:
                outcome = failure
        results.send_nowait((one, outcome))

    def _end_contender(
        self, one: Exchange, failure: AttemptFailed | None, *, status: int = 0
    ) -> None:
        """A contender that failed (``failure``) or brought a head the policy refuses
        (``status``) while others still run."""
        one.close()
        resend = None if failure is None else self._resend_for(failure)
        outcome = str(status) if failure is None else failure.condition
        self._end(one, status, outcome, failed=True, unjudged=resend)

    def _hedge(self, last: Exchange) -> Exchange | None:
        """A hedge, preferably on another endpoint than ``last``'s: None when every endpoint
        is full or the retry budget is spent (hedges and retries share it)."""
        group = self.group
        counts = group.stats.hedges
        taken = group.picker.acquire_now(last.endpoint.address, self.request.client_ip)
        if taken is None:
            counts["no-endpoint"] += 1
            return None
        endpoint, load = taken
        budget = group.protections.retry_budget
        if budget is not None and not budget.try_retry(trio.current_time()):
            group.picker.release_unjudged(load)
            counts["budget-exhausted"] += 1
            return None
        counts["sent"] += 1
        group.stats.tries["total"] += 1
        trace = self.request.trace
        if trace is not None:
            trace.event("hedge", {"meshnode.hedge.endpoint": str(endpoint.address)})
        return self._begin(endpoint, load, last.scope, trio.current_time())

    def _refusable(self, head: ResponseHead) -> bool:
        """Whether the policy might refuse to relay ``head``: a retry or a fallback could
        follow it (``_judge`` decides, once it is the last head left)."""
        if self._retry_condition(head.status, head.headers) is not None:
            return True
        return self._falls_back_on(head.status)

    def _retry_condition(self, status: int, headers: HeaderList) -> str | None:
        """The ``[retry] retry_on`` entry a response head matches, if any."""
        retry = self.policy.retry
        return None if retry is None else head_condition(status, headers, retry.retry_on)

    def _falls_back_on(self, status: int) -> bool:
        """Whether a status fallback takes over an answer of ``status``."""
        return status >= 400 and fallback.on_status(self.policy.fallback, status)

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
        now = self.request.head_at = trio.current_time()
        self.head_status = status
        latencies = self.group.protections.head_latencies
        if latencies is not None:
            latencies.record(now - self.try_started)
        plan = self.policy.fallback
        delay = None
        condition = self._retry_condition(status, headers)
        if condition is not None:
            delay = self._retry_delay(condition, headers)
        if delay is None and not (
            (condition is not None and fallback.on_exhausted(plan)) or self._falls_back_on(status)
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
            return _per_try_timeout(self.per_try)
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
        """Keep a successful GET answer for the stale-cache fallback (its body captured)."""
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


def _hedge_for(request: Request, policy: UpstreamPolicy) -> HedgePolicy | None:
    """The ``[hedge]`` that applies: to an idempotent request without a body (a body is
    read from the caller once, not raced), never to a tunnel."""
    hedge = policy.hedge
    if hedge is None or request.body is not None or request.tunnel:
        return None
    return hedge if request.method in IDEMPOTENT_METHODS else None


def _per_try_timeout(per_try: float) -> AttemptFailed:
    return AttemptFailed("timeout", Timeout(f"no response head within the per-try {per_try:g}s"))


def _capture_for(request: Request, policy: UpstreamPolicy) -> fallback.BodyCapture | None:
    plan = policy.fallback
    if plan is None or plan.kind != "stale-cache" or request.method != b"GET":
        return None
    return fallback.BodyCapture()
