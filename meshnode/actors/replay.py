"""The queue fallback's delivery side: a replay actor per upstream.

Queued requests leave in arrival order, one at a time, when the upstream is
healthy again (its breaker closed and at least one healthy endpoint). Each is
sent with its idempotency key, so an upstream that deduplicates on it sees it
once however often it is tried. A 2xx or 3xx answer ends an entry; a 4xx other
than 408 or 429 dead-letters it at once (sending it again cannot help); anything
else is tried again with a backoff that doubles up to five minutes, until
``max_attempts`` or ``max_age`` dead-letter it. Delivery is at least once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from meshnode.actors.actors import Actor, Breaker
from meshnode.actors.messages import PolicyChanged
from meshnode.actors.picking import EndpointPicker
from meshnode.actors.stats import UpstreamStats
from meshnode.errors import MeshError
from meshnode.events import EventBus, QueueDrained
from meshnode.net.pool import UpstreamConnections, UpstreamPool
from meshnode.net.stream import CANCEL, ResponseHead, Stream, StreamReset
from meshnode.policy.models import UpstreamPolicy
from meshnode.resilience.core.breaker import BreakerState
from meshnode.resilience.spool import AsyncSpool, Entry, SpoolError

log = logging.getLogger(__name__)

IDLE_POLL = 0.5  # seconds between looks at an empty or blocked queue
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
DELIVERY_TIMEOUT = 30.0


class Deliverer:
    """Sends one stored request through the node's pool; answers (status, error)."""

    def __init__(
        self, pool: UpstreamPool, connections: Callable[[UpstreamPolicy], UpstreamConnections]
    ) -> None:
        self._pool = pool
        self._connections = connections

    async def __call__(self, picker: EndpointPicker, entry: Entry) -> tuple[int, str]:
        """Deliver ``entry`` to one of ``picker``'s endpoints, as its upstream's policy says."""
        policy = picker.policy
        endpoint, load = await picker.acquire()
        started = trio.current_time()
        status, error = 0, "no answer"
        try:
            headers = [
                (b":method", entry.method.encode()),
                (b":path", entry.path.encode()),
                (b":scheme", b"http"),
                (b":authority", policy.name.encode()),
                *((name.encode(), value.encode("latin-1")) for name, value in entry.headers),
                (b"idempotency-key", entry.idempotency_key.encode()),
            ]
            limit = policy.timeout.request or DELIVERY_TIMEOUT
            with trio.move_on_after(limit):
                stream = await self._pool.open_stream(
                    endpoint.address,
                    headers,
                    end_stream=not entry.body,
                    connections=self._connections(policy),
                )
                try:
                    if entry.body:
                        await stream.send_data(entry.body, end_stream=True)
                    status, error = await _answer(stream)
                finally:
                    stream.reset(CANCEL)
        except (MeshError, StreamReset) as exc:
            error = str(exc)
        finally:
            picker.release(load, trio.current_time() - started, failed=status == 0 or status >= 500)
        return status, error


async def _answer(stream: Stream) -> tuple[int, str]:
    """The answer's status, read to its end: the exchange completes as the upstream meant."""
    head = await stream.receive()
    status = head.status if isinstance(head, ResponseHead) else 0
    await stream.read_rest(keep=0)
    return status, f"status {status}"


Deliver = Callable[[Entry], Awaitable[tuple[int, str]]]
"""Send one stored request to the upstream: its (status, error)."""


class Replayer(Actor):
    """Replays the upstream's queued requests, once its breaker is closed and an endpoint
    is healthy. ``deliver`` is None where the node has no pool (nothing is sent)."""

    name = "replay"

    def __init__(
        self,
        policy: UpstreamPolicy,
        queue: AsyncSpool | None,
        deliver: Deliver | None,
        breaker: Breaker,
        picker: EndpointPicker,
        bus: EventBus,
        stats: UpstreamStats,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.queue = queue
        self.deliver = deliver
        self.breaker = breaker
        self.picker = picker
        self.bus = bus
        self.stats = stats

    async def started(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._deliver_forever)

    async def handle(self, message: object) -> None:
        if isinstance(message, PolicyChanged):
            self.policy = message.policy

    async def _deliver_forever(self) -> None:
        upstream = self.policy.name
        delivered_in_a_row = 0
        while True:
            queue = self.queue
            plan = self.policy.fallback
            if queue is None or plan is None or plan.kind != "queue" or not self._upstream_ready():
                await trio.sleep(IDLE_POLL)
                continue
            try:
                entry = await queue.run(queue.spool.next_due, upstream)
            except SpoolError:
                log.exception("queue of %s unreadable", upstream)
                await trio.sleep(IDLE_POLL * 10)
                continue
            if entry is None:
                if delivered_in_a_row:
                    depth = (await queue.run(queue.spool.stats, upstream))["depth"]
                    if depth == 0:
                        self.bus.publish(
                            QueueDrained(upstream=upstream, delivered=delivered_in_a_row)
                        )
                        delivered_in_a_row = 0
                await trio.sleep(IDLE_POLL)
                continue
            outcome = await self._try(queue, entry)
            delivered_in_a_row += outcome == "delivered"

    async def _try(self, queue: AsyncSpool, entry: Entry) -> str:
        plan = self.policy.fallback
        assert plan is not None
        age = queue.spool.now() - entry.queued_at
        if entry.attempts >= plan.max_attempts or age > plan.age_limit:
            why = (
                f"{entry.attempts} attempts"
                if entry.attempts >= plan.max_attempts
                else f"older than {plan.age_limit:g}s"
            )
            return await self._dead(queue, entry, f"gave up after {why}: {entry.last_error}")
        if self.deliver is None:
            return "failed"
        status, error = await self.deliver(entry)
        if 200 <= status < 400:
            await queue.run(queue.spool.delivered, entry.id)
            self.stats.queue["delivered"] += 1
            return "delivered"
        if 400 <= status < 500 and status not in (408, 429):
            return await self._dead(queue, entry, f"the upstream answered {status}")
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2**entry.attempts)
        await queue.run(queue.spool.failed, entry.id, error, backoff)
        return "failed"

    async def _dead(self, queue: AsyncSpool, entry: Entry, reason: str) -> str:
        log.warning(
            "queued request %d for %s dead-lettered: %s", entry.id, self.policy.name, reason
        )
        await queue.run(queue.spool.dead_letter, entry.id, reason)
        self.stats.queue["dead-lettered"] += 1
        return "dead"

    def _upstream_ready(self) -> bool:
        core = self.breaker.core
        if core is not None:
            core.poll(trio.current_time())
            if core.state is not BreakerState.CLOSED:
                return False
        return self.picker.endpoint_states()["healthy"] > 0
