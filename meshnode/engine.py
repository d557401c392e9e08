"""The part of meshnode that makes calls: upstream groups, the pool, the request path.

Built from a policy set and brought to the next one on reload. Two request paths
run on it: the outbound ``Proxy`` (routes to upstreams) and, when node.toml has an
inbound listener and TLS, the ``InboundProxy`` (mTLS callers, admitted by identity,
to the local service, which runs as an upstream group of its own, ``(local)``). The
node puts listeners and an admin plane around it; the embedded mesh client
(``meshnode.client``) hands it requests in-process. Both therefore run the very
same routing, protections, retries and fallbacks on the very same policy files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.probes import Prober
from meshnode.actors.replay import Deliverer
from meshnode.actors.stats import UpstreamStats
from meshnode.actors.supervisor import RestartPolicy
from meshnode.events import EventBus
from meshnode.net.overload import Overload
from meshnode.net.pool import (
    PLAIN_H2,
    UpstreamConnections,
    UpstreamPool,
    tcp_connector,
    upstream_connections,
)
from meshnode.net.tls import TLSManager, connect_mesh
from meshnode.net.violations import ConnectionRules, Violations
from meshnode.policy import Address, PolicySet, UpstreamPolicy
from meshnode.policy.diff import PolicyDiff
from meshnode.policy.load import LOCAL
from meshnode.proxy.access_log import log_access
from meshnode.proxy.forward import InboundProxy, Proxy
from meshnode.proxy.routing import RouteTable
from meshnode.resilience.spool import AsyncSpool, Spool, SpoolError

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when [tracing] asks for it
    from meshnode.tracing.tracer import MeshTracer

log = logging.getLogger(__name__)


def tls_paths(policies: PolicySet) -> tuple[Path, Path, Path] | None:
    """The node's CA, certificate and key, relative to the policies directory."""
    files = policies.node.tls
    if files is None:
        return None
    base = policies.directory
    return (base / files.ca, base / files.cert, base / files.key)


def state_dir(policies: PolicySet) -> Path:
    """``[node] state_dir`` (relative to node.toml), else $XDG_STATE_HOME/meshnode."""
    configured = policies.node.node.state_dir
    if configured is not None:
        return policies.directory / configured
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshnode"


class Engine:
    """Upstream groups, the connection pool and the ``Proxy`` that serves requests with them.

    ``groups`` is one dict for the engine's life (updated in place on reload),
    so whoever holds it sees the current upstreams.
    """

    def __init__(
        self,
        policies: PolicySet,
        bus: EventBus,
        *,
        restart_policy: RestartPolicy = RestartPolicy(),
        violations: Violations | None = None,
        overload: Overload | None = None,
        queue_name: str = "queue.db",
    ) -> None:
        """Refuses bad TLS material: ``TLSMaterialError`` lists every problem. ``overload``:
        the node's memory guard, which both request paths shed new requests by."""
        self.bus = bus
        self.groups: dict[str, UpstreamGroup] = {}
        self.local_group: UpstreamGroup | None = None
        self.inbound: InboundProxy | None = None
        self.overload = overload if overload is not None else Overload()
        self.violations = violations if violations is not None else Violations()
        paths = tls_paths(policies)
        self.tls = TLSManager(paths, bus) if paths is not None else None
        self.queue: AsyncSpool | None = None
        self.queue_error: str | None = None
        self._policies = policies
        self._restart_policy = restart_policy
        self._queue_name = queue_name
        self._nursery: trio.Nursery | None = None
        self._pool: UpstreamPool | None = None
        self._proxy: Proxy | None = None
        self._prober: Prober | None = None
        self._deliverer: Deliverer | None = None
        self.tracer: MeshTracer | None = None
        self._retired_tracers: list[MeshTracer] = []  # still sending what they held
        self._retired_spans = (0, 0)  # exported, dropped by tracers that have finished

    @property
    def pool(self) -> UpstreamPool:
        assert self._pool is not None, "the engine has not started"
        return self._pool

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "the engine has not started"
        return self._proxy

    def all_groups(self) -> dict[str, UpstreamGroup]:
        """Every upstream group, the local service's (``(local)``) included."""
        if self.local_group is None:
            return self.groups
        return {**self.groups, LOCAL: self.local_group}

    @property
    def unrouted(self) -> UpstreamStats:
        """The figures of requests that reached no upstream."""
        return self._proxy.unrouted if self._proxy is not None else UpstreamStats()

    async def start(self, nursery: trio.Nursery) -> Proxy:
        """Start every upstream group in ``nursery`` (each has published its first endpoint
        set on return) and the request path that uses them."""
        self._nursery = nursery
        policies = self._policies
        self._pool = UpstreamPool(
            nursery, connector=self._connect, rules=self.rules("upstream", policies)
        )
        trust_domain = policies.node.node.trust_domain

        def connections(upstream: UpstreamPolicy) -> UpstreamConnections:
            """An upstream's connections: its probes' and deliveries' are its requests'."""
            domain = self._proxy.trust_domain if self._proxy else trust_domain
            group = self.groups.get(upstream.name)
            if group is None:  # removed by a reload as it was probed
                return upstream_connections(upstream.upstream, domain, PLAIN_H2.goaways)
            return group.connections(domain)

        self._prober = Prober(self._pool, connections)
        self._deliverer = Deliverer(self._pool, connections)
        self.open_queue(policies)
        for upstream in policies.upstreams.values():
            await self._start_group(upstream)
        proxy = self._proxy = Proxy(
            RouteTable.build(policies.upstreams),
            dict(self.groups),
            self._pool,
            trust_domain=trust_domain,
        )
        proxy.queue = self.queue
        await self._start_inbound(policies)
        self._apply_settings(policies)
        return proxy

    async def _start_inbound(self, policies: PolicySet) -> None:
        """The local service's group and the inbound request path, when node.toml has an
        inbound listener (which needs TLS: its callers are known by their certificates)."""
        listener = policies.node.listeners.inbound
        if listener is None or self.tls is None:
            return
        assert self._nursery is not None and policies.local is not None
        local = self.local_group = UpstreamGroup(policies.local, self.bus, self._restart_policy)
        local.queue = self.queue
        await self._nursery.start(local.run)
        self.inbound = InboundProxy(local, frozenset(listener.allow), self.pool)

    def rules(self, where: str, policies: PolicySet) -> ConnectionRules:
        """The rules a connection of ``where`` is held to under ``policies``' [limits]."""
        return ConnectionRules(where, policies.node.limits, self.violations)

    async def apply(self, new: PolicySet, diff: PolicyDiff) -> None:
        """Bring the groups and the request path to ``new``; requests in flight keep the
        policy they started under, and removed upstreams drain before they stop."""
        assert self._nursery is not None and self._proxy is not None
        self._policies = new
        self.open_queue(new)
        for name in diff.added:
            await self._start_group(new.upstreams[name])
        for name in diff.updated:
            await self.groups[name].update_policy(new.upstreams[name])
        removed = [self.groups.pop(name) for name in diff.removed]
        self._proxy.swap(RouteTable.build(new.upstreams), dict(self.groups))
        self._proxy.trust_domain = new.node.node.trust_domain
        if self.inbound is not None and new.node.listeners.inbound is not None:
            self.inbound.allow = frozenset(new.node.listeners.inbound.allow)
        if self.local_group is not None and new.local is not None:
            await self.local_group.update_policy(new.local)
        self._apply_settings(new)
        for group in removed:
            self._nursery.start_soon(self._retire, group, new.node.node.drain_timeout)

    def open_queue(self, policies: PolicySet) -> None:
        """Open the durable spool once any upstream has a queue fallback."""
        if self.queue is not None or not policies.uses_queue:
            return
        path = state_dir(policies) / self._queue_name
        try:
            self.queue = AsyncSpool(Spool(path))
            self.queue_error = None
        except SpoolError as exc:
            self.queue_error = str(exc)
            log.error("the queue fallback is unavailable: %s", exc)
            return
        for group in self.all_groups().values():
            group.queue = self.queue
        if self._proxy is not None:
            self._proxy.queue = self.queue

    async def watch_tls(self, poll_interval: float) -> None:
        """Re-read the certificate files when they change (rotation), until cancelled."""
        if self.tls is not None:
            await self.tls.watch(poll_interval)

    def close_tunnels(self, why: str) -> None:
        """End every open WebSocket tunnel, outbound and inbound (a drain at its deadline)."""
        for proxy in (self._proxy, self.inbound):
            if proxy is not None:
                proxy.close_tunnels(why)

    def close(self) -> None:
        """Tell every upstream connection we are leaving; streams in flight still finish.
        The tracer sends the spans it holds, on its own thread, while the process lasts."""
        if self._pool is not None:
            self._pool.close_all()
        if self.tracer is not None:
            self.tracer.stop()

    def span_counts(self) -> tuple[int, int]:
        """Spans exported and dropped since the engine started, across reloads (a retired
        tracer's figures are kept once its thread has sent what it held)."""
        for retired in [t for t in self._retired_tracers if t.finished]:
            self._retired_tracers.remove(retired)
            self._retired_spans = (
                self._retired_spans[0] + retired.exported,
                self._retired_spans[1] + retired.dropped,
            )
        tracers = [*self._retired_tracers, *([self.tracer] if self.tracer is not None else [])]
        exported, dropped = self._retired_spans
        exported += sum(tracer.exported for tracer in tracers)
        return exported, dropped + sum(tracer.dropped for tracer in tracers)

    def _apply_tracing(self, policies: PolicySet) -> None:
        """A new tracer when ``[tracing]`` (or the node's name it defaults to) changed; the
        old one sends what it holds and stops."""
        tracing, name = policies.node.tracing, policies.node.node.name
        current = self.tracer
        if current is not None and (current.policy, current.node_name) == (tracing, name):
            return
        if current is not None:
            current.stop()
            self._retired_tracers.append(current)
        self.tracer = None
        if tracing is not None:
            from meshnode.tracing.tracer import MeshTracer  # noqa: PLC0415 - its SDK, when asked

            self.tracer = MeshTracer(tracing, name)
        for proxy in (self._proxy, self.inbound):
            if proxy is not None:
                proxy.tracer = self.tracer

    def _apply_settings(self, policies: PolicySet) -> None:
        """The node settings a reload may change here: [limits] (connections keep the rules
        they began with, new ones take the new) and the access log."""
        assert self._pool is not None and self._proxy is not None
        self._pool.rules = self.rules("upstream", policies)
        self._proxy.limits = policies.node.limits
        self._proxy.overload = self.overload
        self._proxy.observers = [log_access] if policies.node.node.access_log else []
        if self.inbound is not None:
            self.inbound.limits, self.inbound.overload = policies.node.limits, self.overload
        self._apply_tracing(policies)

    async def _connect(self, address: Address, peer: str | None) -> trio.abc.Stream:
        """The pool's connector: cleartext, or mTLS with the current client context."""
        if peer is None or self.tls is None:
            return await tcp_connector(address, peer)
        return await connect_mesh(address, peer, self.tls.material.client)

    async def _start_group(self, policy: UpstreamPolicy) -> None:
        assert self._nursery is not None
        group = UpstreamGroup(
            policy, self.bus, self._restart_policy, self._prober, self.queue, self._deliverer
        )
        await self._nursery.start(group.run)
        self.groups[policy.name] = group

    async def _retire(self, group: UpstreamGroup, timeout: float) -> None:
        finished = await group.picker.drain(timeout)
        group.stop()
        log.info(
            "upstream %s removed%s", group.name, "" if finished else " with requests cut short"
        )
