"""The node's event bus: state changes fanned out to any number of subscribers.

Publishing never blocks and never fails: each subscriber has a bounded queue,
and a subscriber that falls behind loses its oldest events, then is told how
many it missed (an ``events-missed`` event) before the next one it gets. The
admin WebSocket, logs and tests are all just subscribers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import attrs
import trio

DEFAULT_QUEUE = 1000


@attrs.frozen(kw_only=True)
class Event:
    """A past-tense fact. ``type`` is the SPEC name; fields are the payload."""

    type: ClassVar[str]
    timestamp: float = attrs.field(factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The SPEC shape; a field named ``from_`` (a Python keyword) is sent as ``from``."""
        fields = attrs.asdict(self, recurse=True)
        return {
            "type": self.type,
            **{key.removesuffix("_"): value for key, value in fields.items()},
        }


@attrs.frozen(kw_only=True)
class ActorRestarted(Event):
    type = "actor-restarted"
    upstream: str
    actor: str
    restarts: int
    error: str
    failed: bool  # the restart storm limit was reached: the upstream is marked failed


@attrs.frozen(kw_only=True)
class BreakerStateChanged(Event):
    type = "breaker-state-change"
    upstream: str
    from_: str
    to: str
    reason: str


@attrs.frozen(kw_only=True)
class EndpointHealthChanged(Event):
    type = "endpoint-health-change"
    upstream: str
    endpoint: str
    from_: str
    to: str
    reason: str


@attrs.frozen(kw_only=True)
class ServiceChanged(Event):
    type = "service-changed"
    upstream: str
    instances: list[str]
    previous: list[str]


@attrs.frozen(kw_only=True)
class QueueFilling(Event):
    type = "queue-filling"
    upstream: str
    id: int


@attrs.frozen(kw_only=True)
class QueueDrained(Event):
    type = "queue-drained"
    upstream: str
    delivered: int


@attrs.frozen(kw_only=True)
class PolicyReloaded(Event):
    type = "policy-reloaded"
    version: str
    previous_version: str
    trigger: str
    added: list[str]
    removed: list[str]
    updated: list[str]


@attrs.frozen(kw_only=True)
class PolicyRejected(Event):
    type = "policy-rejected"
    trigger: str
    errors: list[str]


@attrs.frozen(kw_only=True)
class OverloadChanged(Event):
    """The node came under (or out of) pressure: ``memory`` or ``connections:<listener>``."""

    type = "overload"
    reason: str
    active: bool


@attrs.frozen(kw_only=True)
class EventsMissed(Event):
    type = "events-missed"
    count: int


class Subscription:
    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque(maxlen=size)
        self._missed = 0
        self._wakeup = trio.Event()

    def _offer(self, event: Event) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._missed += 1
        self._queue.append(event)
        self._wakeup.set()

    async def receive(self) -> Event:
        while not self._queue:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self._missed:
            missed, self._missed = self._missed, 0
            return EventsMissed(count=missed)
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.receive()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:
            subscription._offer(event)

    def subscribe(self, size: int = DEFAULT_QUEUE) -> Subscription:
        """A new subscription; use it as a context manager so it is dropped when done."""
        subscription = Subscription(self, size)
        self._subscriptions.add(subscription)
        return subscription
