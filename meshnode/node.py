"""The node: listeners, upstream groups, the pool, reload and the admin plane under one nursery.

``Node.run`` reports the bound addresses through ``task_status`` once the
listeners accept and every upstream group has published its first endpoint
set, so "started" means ready. SIGHUP reloads the policies (as do changes in
the directory and ``POST /admin/reload``). SIGINT/SIGTERM (or
``request_drain``) drain: readiness turns 503, the outbound listener stops
accepting and sends GOAWAY, in-flight requests get up to ``drain_timeout``,
then the node exits. A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Any

import attrs
import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.stats import UpstreamStats
from meshnode.actors.supervisor import RestartPolicy
from meshnode.admin.api import admin_routes, admin_websockets
from meshnode.admin.control import NodeAdmin
from meshnode.admin.history import SAMPLE_INTERVAL, RateHistory
from meshnode.admin.http import AdminHTTPServer
from meshnode.admin.origins import allowed_hosts
from meshnode.engine import Engine, tls_paths
from meshnode.events import EventBus, OverloadChanged
from meshnode.fleet.member import FleetMember
from meshnode.fleet.store import StoreAccess
from meshnode.net.busy_poll import BusyPoll
from meshnode.net.listener import H2Listener
from meshnode.net.overload import Overload
from meshnode.net.tls import TLSMaterialError, load_material
from meshnode.net.violations import Violations
from meshnode.notify import Notifier
from meshnode.policy import Address, PolicySet
from meshnode.policy.diff import PolicyDiff
from meshnode.policy.load import read_token
from meshnode.policy.models import NodeHealthCheck
from meshnode.reload import POLL_INTERVAL, Reloader, ReloadResult, watch_directory
from meshnode.resilience.core.breaker import BreakerState
from meshnode.resilience.core.health import health_report
from meshnode.resilience.health import CommonHealthChecks, HealthCheck, HealthCheckManager
from meshnode.resilience.spool import AsyncSpool

log = logging.getLogger(__name__)


@attrs.frozen
class Bindings:
    """Where a worker of ``serve --workers`` listens, instead of node.toml's addresses: the
    ports its parent reserved, shared with the other workers (SO_REUSEPORT), and an admin
    listener of its own that only the parent talks to."""

    outbound: Address
    admin: Address
    inbound: Address | None = None
    worker: int = 0  # its queue database is its own: queue-<worker>.db


@attrs.frozen
class NodeAddresses:
    outbound: list[Address]
    admin: list[Address]
    inbound: list[Address] = attrs.field(factory=list)


TLS_POLL_INTERVAL = 1.0  # seconds between looks at the certificate files
TUNNEL_CLOSE_GRACE = 1.0  # seconds before the drain deadline that tunnels are told to close
LAG_PROBE = 0.25  # seconds the loop-lag probe sleeps


def node_health_check(policy: NodeHealthCheck) -> HealthCheck:
    """A HealthCheck from one [[health_checks]] table."""
    common = CommonHealthChecks
    if policy.kind == "memory":
        check = common.memory(policy.name, policy.threshold_percent)
    elif policy.kind == "disk":
        check = common.disk(policy.name, policy.path, policy.threshold_percent)
    elif policy.kind == "tcp":
        assert policy.address is not None
        check = common.tcp(policy.name, policy.address.host, policy.address.port)
    elif policy.kind == "http":
        assert policy.url is not None
        check = common.external_service(policy.name, policy.url)
    else:
        check = common.command(policy.name, policy.command)
    return attrs.evolve(
        check,
        type=policy.type,
        critical=policy.critical,
        interval=policy.interval,
        timeout=policy.timeout,
        failure_threshold=policy.failure_threshold,
        success_threshold=policy.success_threshold,
    )


def preflight(policies: PolicySet) -> list[str]:
    """Problems that would stop the node from starting beyond the policy files: TLS material."""
    paths = tls_paths(policies)
    if paths is None:
        return []
    try:
        load_material(*paths)
    except TLSMaterialError as exc:
        return exc.problems
    return []


class Node:
    def __init__(
        self,
        policies: PolicySet,
        *,
        restart_policy: RestartPolicy = RestartPolicy(),
        poll_interval: float | None = POLL_INTERVAL,
        notifier: Notifier | None = None,
        bindings: Bindings | None = None,
    ) -> None:
        """``poll_interval`` None turns off watching the directory (SIGHUP and admin remain)."""
        self.bus = EventBus()
        self.reloader = Reloader(policies, self._apply, self.bus, time.time)
        self.violations = Violations()
        self.overload = Overload(policies.node.limits.overload_memory, on_change=self._on_overload)
        # Refuses to start with bad material: TLSMaterialError says every problem.
        self.engine = Engine(
            policies,
            self.bus,
            restart_policy=restart_policy,
            violations=self.violations,
            overload=self.overload,
            queue_name=f"queue-{bindings.worker}.db" if bindings else "queue.db",
        )
        self.groups = self.engine.groups
        self.tls = self.engine.tls
        self.listening = False
        self.draining = False
        self._restart_policy = restart_policy
        self._poll_interval = poll_interval
        self._bindings = bindings
        self._drain_requested = trio.Event()
        self._exit_requested = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._admin_token: str | None = None
        self.notifier = notifier if notifier is not None else Notifier()
        self.checks = HealthCheckManager()
        self._checks_scope: trio.CancelScope | None = None
        self.loop_lag = 0.0
        self.rates = RateHistory()  # the status page's sparklines
        self.busy_poll = BusyPoll()
        self._listeners: list[H2Listener] = []
        self.admin = NodeAdmin(self)  # what the admin API reads and commands
        self.fleet: FleetMember | None = None  # with [node] policy_source
        self.addresses = NodeAddresses([], [])

    @property
    def policies(self) -> PolicySet:
        return self.reloader.current

    @property
    def history(self) -> Reloader:
        return self.reloader

    @property
    def local_group(self) -> UpstreamGroup | None:
        """The inbound listener's local service, as an upstream group (``(local)``)."""
        return self.engine.local_group

    @property
    def unrouted(self) -> UpstreamStats:
        return self.engine.unrouted

    @property
    def token_required(self) -> bool:
        return self._admin_token is not None

    def all_groups(self) -> dict[str, UpstreamGroup]:
        return self.engine.all_groups()

    def span_counts(self) -> tuple[int, int]:
        return self.engine.span_counts()

    @property
    def queue(self) -> AsyncSpool | None:
        return self.engine.queue

    @property
    def queue_error(self) -> str | None:
        return self.engine.queue_error

    def request_drain(self, *, then_exit: bool = True) -> None:
        """Drain; then exit (signals) or stay up answering the admin API (``POST /admin/drain``)."""
        if then_exit:
            self._exit_requested.set()
        self._drain_requested.set()

    async def reload(self, trigger: str) -> ReloadResult:
        self.notifier.reloading()
        try:
            result = await self.reloader.reload(trigger)
        finally:
            self.notifier.ready(self._status_line())
        return result

    def _status_line(self) -> str:
        """What `systemctl status` shows: what is served, under which policies."""
        if self.draining:
            return "draining: no new connections"
        last = self.reloader.last_error
        rejected = f"; last reload rejected ({len(last.errors)} error(s))" if last else ""
        return f"serving {len(self.groups)} upstream(s), policies {self.policies.version}{rejected}"

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._serve(handle_signals, task_status)
        finally:
            self.busy_poll.uninstall()  # the trio run may go on without the node (tests)

    async def _serve(
        self, handle_signals: bool, task_status: trio.TaskStatus[NodeAddresses]
    ) -> None:
        policy = self.policies.node
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if handle_signals:
                await nursery.start(self._watch_signals, nursery.cancel_scope)
            engine = self.engine
            proxy = await engine.start(nursery)
            outbound = H2Listener(
                "outbound",
                proxy.handle,
                rules=engine.rules("outbound", self.policies),
                overload=self.overload,
                http1=True,
            )
            bindings = self._bindings
            outbound_addresses = await nursery.start(
                functools.partial(outbound.serve, reuse_port=bindings is not None),
                bindings.outbound if bindings else policy.listeners.outbound.address,
            )
            listeners = [outbound]
            inbound_addresses: list[Address] = []
            inbound_policy = policy.listeners.inbound
            if engine.inbound is not None and inbound_policy is not None and self.tls is not None:
                tls = self.tls
                inbound = H2Listener(
                    "inbound",
                    engine.inbound.handle,
                    tls=lambda: tls.material.server,
                    handshake_timeout=inbound_policy.handshake_timeout,
                    rules=engine.rules("inbound", self.policies),
                    overload=self.overload,
                )
                inbound_addresses = await nursery.start(
                    functools.partial(inbound.serve, reuse_port=bindings is not None),
                    bindings.inbound if bindings and bindings.inbound else inbound_policy.address,
                )
                listeners.append(inbound)
            self._listeners = listeners
            nursery.start_soon(engine.watch_tls, TLS_POLL_INTERVAL)
            nursery.start_soon(self.overload.watch_memory)
            nursery.start_soon(self._sample_rates)
            nursery.start_soon(self._measure_loop_lag)
            await self._start_checks(self.policies)
            self._apply_node_settings(self.policies)
            admin = AdminHTTPServer(
                admin_routes(self.admin),
                admin_websockets(self.admin),
                token=lambda: self._admin_token,
                allowed_hosts=lambda: allowed_hosts(self.policies.node.admin),
            )
            admin_addresses = await nursery.start(
                admin.serve, bindings.admin if bindings else policy.admin.address
            )
            if self._poll_interval is not None:
                nursery.start_soon(
                    functools.partial(
                        watch_directory,
                        self.policies.directory,
                        functools.partial(self.reload, "file-change"),
                        baseline=self.policies.fingerprint,
                        poll_interval=self._poll_interval,
                    )
                )
            self.listening = True
            log.info(
                "meshnode ready: outbound=%s admin=%s inbound=%s policies=%s version=%s",
                ",".join(map(str, outbound_addresses)),
                ",".join(map(str, admin_addresses)),
                ",".join(map(str, inbound_addresses)) or "-",
                self.policies.directory,
                self.policies.version,
            )
            self.addresses = NodeAddresses(outbound_addresses, admin_addresses, inbound_addresses)
            task_status.started(self.addresses)
            source = policy.node.policy_source
            if source is not None:
                directory = self.policies.directory
                self.fleet = FleetMember(
                    StoreAccess.of(source, policy.fleet, directory),
                    directory,
                    policy.node.name,
                    reload=self.reload,
                    report=self._fleet_report,
                    ttl=policy.fleet.registry_ttl,
                )
                nursery.start_soon(self.fleet.run)
            self.notifier.ready(self._status_line())
            nursery.start_soon(self.notifier.watchdog)

            await self._drain_requested.wait()
            self.draining = True
            if self._exit_requested.is_set():  # a signal: the process is on its way out
                self.notifier.stopping(self._status_line())
            else:  # POST /admin/drain: it stays up, answering the admin API
                self.notifier.status(self._status_line())
            timeout = self.policies.node.node.drain_timeout
            log.info("draining: up to %gs for requests in flight", timeout)
            results: list[bool] = []
            async with trio.open_nursery() as draining:
                # Tunnels never finish by themselves: they are told (WebSocket Close) a moment
                # before the deadline, so the close reaches them before connections are cut.
                close_at = trio.current_time() + timeout - min(TUNNEL_CLOSE_GRACE, timeout / 2)
                draining.start_soon(self._close_tunnels_at, close_at)
                async with trio.open_nursery() as listeners_draining:
                    for listener in listeners:
                        listeners_draining.start_soon(_drain_into, listener, timeout, results)
                draining.cancel_scope.cancel()
            finished = all(results)
            engine.close()
            log.info("drained %s", "cleanly" if finished else "with requests cut short")
            await self._exit_requested.wait()
            log.info("stopping")
            self.notifier.stopping("stopping: drained")
            nursery.cancel_scope.cancel()

    async def _apply(self, new: PolicySet, diff: PolicyDiff) -> None:
        """Bring the running node to ``new``; requests in flight keep their own policy."""
        await self.engine.apply(new, diff)
        if new.node.health_checks != self.policies.node.health_checks:
            await self._start_checks(new)
        self._apply_node_settings(new)

    async def _start_checks(self, policies: PolicySet) -> None:
        """(Re)start the node's own [[health_checks]]; the previous set stops."""
        assert self._nursery is not None
        if self._checks_scope is not None:
            self._checks_scope.cancel()
        self.checks = HealthCheckManager(
            [node_health_check(check) for check in policies.node.health_checks]
        )
        manager = self.checks
        scope = self._checks_scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await manager.run(task_status=task_status)

        await self._nursery.start(run)

    async def _close_tunnels_at(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        self.engine.close_tunnels("the node is draining")

    async def _measure_loop_lag(self) -> None:
        """How late the event loop wakes a sleeper: liveness fails when it falls far behind."""
        while True:
            before = trio.current_time()
            await trio.sleep(LAG_PROBE)
            self.loop_lag = max(0.0, trio.current_time() - before - LAG_PROBE)

    async def _sample_rates(self) -> None:
        while True:
            self.rates.sample({n: g.stats for n, g in self.groups.items()}, trio.current_time())
            await trio.sleep(SAMPLE_INTERVAL)

    def _fleet_report(self) -> dict[str, Any]:
        """What this node says of itself in the fleet's registry."""
        status, _ = health_report(self.admin.health_checks(), "readiness")
        last = self.reloader.last_error
        addresses = self.addresses
        return {
            "addresses": {
                "outbound": [str(a) for a in addresses.outbound],
                "admin": [str(a) for a in addresses.admin],
                "inbound": [str(a) for a in addresses.inbound],
            },
            "identity": self.tls.material.identity if self.tls is not None else None,
            "version": self.policies.version,
            "ready": status == 200,
            "last_reload_error": None if last is None else list(last.errors),
            "open_breakers": sorted(
                name
                for name, group in self.groups.items()
                if group.breaker.core is not None
                and group.breaker.core.state is not BreakerState.CLOSED
            ),
        }

    def _on_overload(self, reason: str, active: bool) -> None:
        self.bus.publish(OverloadChanged(reason=reason, active=active))

    def _apply_node_settings(self, policies: PolicySet) -> None:
        """Node settings that a reload may change beyond the engine's: the admin token, the
        listeners' rules, the memory limit, and the event loop's busy poll."""
        limits = policies.node.limits
        self.busy_poll.configure(policies.node.node.busy_poll)
        for listener in self._listeners:
            listener.rules = self.engine.rules(listener.name, policies)
        self.overload.memory_limit = limits.overload_memory
        token_file = policies.node.admin.token_file
        self._admin_token = (
            None if token_file is None else read_token(policies.directory, token_file)
        )

    async def _watch_signals(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    assert self._nursery is not None
                    self._nursery.start_soon(self.reload, "sighup")
                elif self._exit_requested.is_set():
                    log.warning("second %s: stopping now", name)
                    scope.cancel()
                    return
                else:
                    log.info("%s received", name)
                    self.request_drain(then_exit=True)


async def _drain_into(listener: H2Listener, timeout: float, results: list[bool]) -> None:
    results.append(await listener.drain(timeout))
