"""``ServiceDiscovery``: the seed's discovery client for Python programs, on the node's backends.

    async with ServiceDiscovery(backend="consul", consul_url="http://127.0.0.1:8500",
                                refresh_interval=15.0) as discovery:
        discovery.on("service-changed", lambda change: print(change.service_name))
        instances = await discovery.discover_service("api-service")

``discover_service`` starts watching a service the first time it is asked for
(and returns its instances once the registry first answers), then answers from
the cache, which the watch keeps current. Options are the ``[discovery]`` keys
of the chosen backend; durations are seconds. Registry outages keep the last
instances, as in the node (``keep_discovering``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Self

import attrs
import trio

from meshnode.discovery.backends import make_source
from meshnode.discovery.runner import DiscoveryState, keep_discovering
from meshnode.discovery.source import DiscoveryError
from meshnode.policy.convert import converter, error_lines
from meshnode.policy.models import DISCOVERY_BACKENDS, Discovery, Endpoint
from meshnode.policy.units import Duration
from meshnode.resilience.balancer import Instance
from meshnode.resilience.calls import invoke
from meshnode.resilience.durations import seconds

FIRST_ANSWER_TIMEOUT = 10.0


@attrs.frozen
class ServiceChange:
    service_name: str
    instances: list[Instance]
    previous: list[Instance]


ChangeListener = Callable[[ServiceChange], object]  # a plain or coroutine function


class ServiceDiscovery:
    def __init__(self, backend: str = "static", **options: Any) -> None:
        """Check the options now: a bad one raises ``ValueError`` naming it."""
        if backend not in DISCOVERY_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: one of {', '.join(DISCOVERY_BACKENDS)}")
        table = {
            key: str(Duration(seconds(value, key))) if _is_duration(key) else value
            for key, value in options.items()
        }
        self._table: dict[str, Any] = {"backend": backend, **table}
        self._policy(None)  # fail early on a bad option
        self._instances: dict[str, list[Instance]] = {}
        self._ready: dict[str, trio.Event] = {}
        self.states: dict[str, DiscoveryState] = {}
        self._listeners: list[ChangeListener] = []
        self._nursery: trio.Nursery | None = None
        self._manager: Any = None

    async def __aenter__(self) -> Self:
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._manager.__aexit__(*exc_info)  # type: ignore[no-any-return]

    def on(self, event: Literal["service-changed"], listener: ChangeListener) -> None:
        """Call ``listener`` (a plain or coroutine function) with a ``ServiceChange``
        whenever a watched service changes."""
        if event != "service-changed":
            raise ValueError(f"unknown event {event!r}: only 'service-changed' is emitted")
        self._listeners.append(listener)

    async def discover_service(self, name: str) -> list[Instance]:
        """The service's instances; the first call starts watching it."""
        if name not in self._ready:
            if self._nursery is None:
                raise RuntimeError("use ServiceDiscovery with 'async with'")
            self._ready[name] = trio.Event()
            self.states[name] = DiscoveryState(self._table["backend"], name)
            source = make_source(self._policy(name), name)

            async def publish(endpoints: tuple[Endpoint, ...]) -> None:
                for change in self._update(name, endpoints):
                    for listener in self._listeners:
                        await invoke(listener, change)

            self._nursery.start_soon(keep_discovering, source, publish, self.states[name])
        with trio.move_on_after(FIRST_ANSWER_TIMEOUT):
            await self._ready[name].wait()
        if name not in self._instances:
            state = self.states[name]
            raise DiscoveryError(f"{name}: no answer from the registry: {state.last_error}")
        return list(self._instances[name])

    def _update(self, name: str, endpoints: tuple[Endpoint, ...]) -> list[ServiceChange]:
        """Keep the new instances; the change to announce, if they differ."""
        instances = [
            Instance(str(e.address), str(e.address), e.weight, dict(e.metadata)) for e in endpoints
        ]
        previous = self._instances.get(name, [])
        self._instances[name] = instances
        self._ready[name].set()
        return [ServiceChange(name, instances, previous)] if instances != previous else []

    def _policy(self, name: str | None) -> Discovery:
        table = dict(self._table)
        if name is not None and table["backend"] in ("consul", "kubernetes"):
            table.setdefault("service", name)
        if table["backend"] == "dns":
            table.setdefault("name", name or "placeholder.invalid")
        try:
            return converter.structure(table, DISCOVERY_BACKENDS[table["backend"]])
        except Exception as exc:
            problems = "; ".join(f"{key}: {reason}" for key, reason in error_lines(exc))
            raise ValueError(problems) from exc


def _is_duration(key: str) -> bool:
    return key in ("refresh_interval", "min_ttl", "wait")
