"""The node as the admin API sees it: ``NodeControl`` implemented over a running node's facts.

The node (a layer above) hands ``NodeAdmin`` what it is made of through ``NodeFacts``:
its upstream groups, policies and reload history, TLS material, queue, flags and
commands. Everything the admin plane reports (health checks, the metrics exposition,
the upstreams, policies and status reports, the queue's contents) is built here, so
that the node keeps only its lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.stats import UpstreamStats
from meshnode.admin.api import ReloadOutcome
from meshnode.admin.history import RateHistory
from meshnode.admin.metrics import Exposition, MeshCollector
from meshnode.events import EventBus
from meshnode.net.busy_poll import BusyPoll
from meshnode.net.overload import Overload
from meshnode.net.tls import TLSManager
from meshnode.net.violations import Violations
from meshnode.policy import PolicySet
from meshnode.policy.convert import converter
from meshnode.resilience.core.breaker import Override
from meshnode.resilience.core.health import CheckResult
from meshnode.resilience.health import HealthCheckManager
from meshnode.resilience.spool import AsyncSpool

log = logging.getLogger(__name__)

MAX_LOOP_LAG = 1.0  # liveness fails when the loop wakes a sleeper later than this (seconds)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class ReloadError(Protocol):
    @property
    def at(self) -> float: ...

    @property
    def trigger(self) -> str: ...

    @property
    def errors(self) -> tuple[str, ...]: ...


class PolicyHistory(Protocol):
    """The policies in force and how they came to be (the node's reloader)."""

    @property
    def current(self) -> PolicySet: ...

    @property
    def loaded_at(self) -> float: ...

    @property
    def last_error(self) -> ReloadError | None: ...

    @property
    def reloads(self) -> Mapping[str, int]: ...


class NodeFacts(Protocol):
    """What a running node is made of, for its admin plane to read and command."""

    bus: EventBus
    groups: dict[str, UpstreamGroup]  # the outbound upstreams
    tls: TLSManager | None
    checks: HealthCheckManager  # the node's own [[health_checks]]
    rates: RateHistory
    violations: Violations
    overload: Overload
    busy_poll: BusyPoll
    listening: bool
    draining: bool
    loop_lag: float  # seconds the event loop last woke a sleeper late

    @property
    def history(self) -> PolicyHistory: ...

    @property
    def queue(self) -> AsyncSpool | None: ...

    @property
    def queue_error(self) -> str | None: ...

    @property
    def unrouted(self) -> UpstreamStats: ...

    @property
    def token_required(self) -> bool: ...

    def all_groups(self) -> dict[str, UpstreamGroup]: ...

    def span_counts(self) -> tuple[int, int]:
        """Spans exported and dropped by [tracing] since the node started."""

    async def reload(self, trigger: str) -> ReloadOutcome: ...

    def request_drain(self, *, then_exit: bool) -> None: ...


class NodeAdmin:
    """``admin.api.NodeControl`` for one node."""

    def __init__(self, node: NodeFacts) -> None:
        self.node = node
        self.bus = node.bus
        self._exposition = Exposition(
            MeshCollector(
                groups=node.all_groups,
                unrouted=lambda: node.unrouted,
                reloads=lambda: node.history.reloads,
                certificate_seconds=lambda: (
                    node.tls.material.seconds_left() if node.tls is not None else None
                ),
                violations=node.violations,
                overload=node.overload,
                busy_poll=node.busy_poll,
                spans=node.span_counts,
            )
        )

    async def reload(self, trigger: str) -> ReloadOutcome:
        return await self.node.reload(trigger)

    def request_drain(self, *, then_exit: bool) -> None:
        self.node.request_drain(then_exit=then_exit)

    def metrics(self) -> bytes:
        return self._exposition.render()

    def health_checks(self) -> list[CheckResult]:
        node = self.node
        return [
            *self._node_checks(),
            *self._upstream_checks(),
            *self._queue_checks(),
            *node.checks.results(),
        ]

    def _node_checks(self) -> list[CheckResult]:
        node = self.node
        groups = list(node.all_groups().values())
        supervised = sum(group.supervising for group in groups)
        checks = [
            CheckResult(
                "event-loop",
                "liveness",
                True,
                node.loop_lag < MAX_LOOP_LAG,
                f"loop lag {node.loop_lag * 1000:.1f} ms",
            ),
            CheckResult(
                "supervisors",
                "liveness",
                True,
                supervised == len(groups),
                f"{supervised} of {len(groups)} upstream group(s) supervised",
            ),
            CheckResult(
                "listeners",
                "readiness",
                True,
                node.listening,
                "bound" if node.listening else "not bound yet",
            ),
            CheckResult(
                "policies",
                "readiness",
                True,
                True,
                f"version {node.history.current.version} in force",
            ),
            CheckResult(
                "drain",
                "readiness",
                True,
                not node.draining,
                "draining" if node.draining else "taking traffic",
            ),
        ]
        if node.tls is not None:
            material = node.tls.material
            left = material.seconds_left()
            checks.append(
                CheckResult(
                    "certificate",
                    "readiness",
                    True,
                    left > 0,
                    f"{material.identity} expires in {left / 86400:.1f} days"
                    if left > 0
                    else f"{material.identity} has expired",
                )
            )
        return checks

    def _upstream_checks(self) -> list[CheckResult]:
        checks = []
        for name, group in sorted(self.node.groups.items()):
            picker = group.picker
            healthy_count = picker.endpoint_states()["healthy"]
            message = f"{healthy_count} of {len(picker.endpoints.endpoints)} endpoint(s) healthy"
            healthy = healthy_count > 0
            if group.failed:
                healthy, message = False, "its actors are crash-looping"
            critical = group.policy.upstream.critical
            checks.append(CheckResult(f"upstream:{name}", "readiness", critical, healthy, message))
            discovery = group.discovery.state
            if discovery.backend != "static":
                fresh = not discovery.stale
                checks.append(
                    CheckResult(
                        f"discovery:{name}",
                        "readiness",
                        False,  # stale endpoints still serve: worth a look, not a 503
                        fresh,
                        f"{discovery.source}: "
                        + ("up to date" if fresh else f"stale: {discovery.last_error}"),
                    )
                )
        return checks

    def _queue_checks(self) -> list[CheckResult]:
        node = self.node
        if not node.history.current.uses_queue:
            return []
        message = node.queue_error or "the queue database is open"
        return [CheckResult("queue", "readiness", True, node.queue is not None, message)]

    # -- the queue fallback's spool --------------------------------------------

    def _queue_of(self, upstream: str) -> AsyncSpool | None:
        """The spool, if there is one and ``upstream`` is one of the node's."""
        queue = self.node.queue
        return queue if upstream in self.node.all_groups() else None

    async def queue_report(self, upstream: str) -> dict[str, Any] | None:
        queue = self._queue_of(upstream)
        if queue is None:
            return None
        stats = await queue.run(queue.spool.stats, upstream)
        entries = await queue.run(queue.spool.entries, upstream)
        dead = await queue.run(queue.spool.dead_letters, upstream)
        return {
            "upstream": upstream,
            "depth": stats["depth"],
            "bytes": stats["bytes"],
            "oldest_age_seconds": stats["oldest_age_seconds"],
            "dead_letter_count": stats["dead_letters"],
            "entries": [e.summary() for e in entries],
            "dead_letters": [e.summary() for e in dead],
        }

    async def queue_entry(self, upstream: str, entry_id: int) -> dict[str, Any] | None:
        queue = self.node.queue
        if queue is None:
            return None
        found = await queue.run(queue.spool.get, upstream, entry_id)
        if found is None:
            return None
        entry, dead_because = found
        return {
            **entry.summary(),
            "state": "queued" if dead_because is None else "dead",
            "dead_because": dead_because,
            "headers": [[n, "(redacted)" if n in SECRET_HEADERS else v] for n, v in entry.headers],
            "body_preview": entry.body[:256].decode("utf-8", errors="replace"),
        }

    async def queue_retry(self, upstream: str) -> int | None:
        queue = self._queue_of(upstream)
        return None if queue is None else await queue.run(queue.spool.retry, upstream)

    async def queue_purge(self, upstream: str) -> int | None:
        queue = self._queue_of(upstream)
        return None if queue is None else await queue.run(queue.spool.purge, upstream)

    # -- commands and reports ----------------------------------------------------

    def forget_sessions(self, client: str) -> int:
        key = client.encode()
        groups = self.node.all_groups().values()
        return sum(group.picker.forget_sessions(key) for group in groups)

    def force_breaker(self, upstream: str, state: str) -> dict[str, Any] | None:
        group = self.node.groups.get(upstream)
        if group is None:
            return None
        group.breaker.force(Override(state))
        log.warning("operator set the breaker of %s to %s", upstream, state)
        return {"upstream": upstream, **group.breaker.report()}

    def upstreams_report(self) -> dict[str, Any]:
        groups = self.node.groups
        return {"upstreams": {name: group.report() for name, group in sorted(groups.items())}}

    def status_report(self) -> dict[str, Any]:
        node = self.node
        policies = self.policies_report()
        upstreams = {
            name: {**group.report(), "rates": node.rates.rates(name)}
            for name, group in sorted(node.groups.items())
        }
        return {
            "node": node.history.current.node.node.name,
            "version": policies["version"],
            "loaded_at": policies["loaded_at"],
            "last_reload_error": policies["last_error"],
            "draining": node.draining,
            "token_required": node.token_required,
            "upstreams": upstreams,
        }

    def policies_report(self) -> dict[str, Any]:
        history = self.node.history
        policies = history.current
        last_error = history.last_error
        return {
            "version": policies.version,
            "loaded_at": _iso(history.loaded_at),
            "directory": str(policies.directory),
            "files": dict(policies.files),
            "node": converter.unstructure(policies.node),
            "upstreams": {
                name: converter.unstructure(policy)
                for name, policy in sorted(policies.upstreams.items())
            },
            "reloads": dict(history.reloads),
            "last_error": None
            if last_error is None
            else {
                "at": _iso(last_error.at),
                "trigger": last_error.trigger,
                "errors": list(last_error.errors),
            },
        }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
