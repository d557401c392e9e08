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
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.supervisor import RestartPolicy
from meshnode.admin.api import admin_routes, admin_websockets
from meshnode.admin.history import SAMPLE_INTERVAL, RateHistory
from meshnode.admin.http import AdminHTTPServer
from meshnode.admin.metrics import Exposition, MeshCollector
from meshnode.admin.origins import allowed_hosts
from meshnode.engine import Engine, tls_paths, uses_queue
from meshnode.events import EventBus, OverloadChanged
from meshnode.net.busy_poll import BusyPoll
from meshnode.net.listener import H2Listener
from meshnode.net.overload import Overload
from meshnode.net.tls import TLSMaterialError, load_material
from meshnode.net.violations import Violations
from meshnode.notify import Notifier
from meshnode.policy import Address, PolicySet
from meshnode.policy.convert import converter
from meshnode.policy.diff import PolicyDiff
from meshnode.policy.load import LOCAL, read_token
from meshnode.policy.models import NodeHealthCheck
from meshnode.proxy.forward import InboundProxy
from meshnode.reload import POLL_INTERVAL, Reloader, ReloadResult, watch_directory
from meshnode.resilience.core.breaker import Override
from meshnode.resilience.core.health import CheckResult
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
MAX_LOOP_LAG = 1.0  # liveness fails when the loop wakes a sleeper later than this


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
        # Refuses to start with bad material: TLSMaterialError says every problem.
        self.engine = Engine(
            policies,
            self.bus,
            restart_policy=restart_policy,
            violations=self.violations,
            queue_name=f"queue-{bindings.worker}.db" if bindings else "queue.db",
        )
        self.groups = self.engine.groups
        self.tls = self.engine.tls
        self.local_group: UpstreamGroup | None = None
        self._inbound: InboundProxy | None = None
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
        self.overload = Overload(policies.node.limits.overload_memory, on_change=self._on_overload)
        self.busy_poll = BusyPoll()
        self._listeners: list[H2Listener] = []
        self._exposition = Exposition(
            MeshCollector(
                groups=self._all_groups,
                unrouted=lambda: self.engine.unrouted,
                reloads=lambda: self.reloader.reloads,
                certificate_seconds=lambda: (
                    self.tls.material.seconds_left() if self.tls is not None else None
                ),
                violations=self.violations,
                overload=self.overload,
                busy_poll=self.busy_poll,
            )
        )

    @property
    def policies(self) -> PolicySet:
        return self.reloader.current

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
            if inbound_policy is not None and self.tls is not None:
                assert self.policies.local is not None
                self.local_group = UpstreamGroup(
                    self.policies.local, self.bus, self._restart_policy
                )
                self.local_group.queue = engine.queue
                await nursery.start(self.local_group.run)
                self._inbound = InboundProxy(
                    self.local_group, frozenset(inbound_policy.allow), engine.pool
                )
                tls = self.tls
                inbound = H2Listener(
                    "inbound",
                    self._inbound.handle,
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
                admin_routes(self),
                admin_websockets(self),
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
            task_status.started(
                NodeAddresses(outbound_addresses, admin_addresses, inbound_addresses)
            )
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

    def _all_groups(self) -> dict[str, UpstreamGroup]:
        if self.local_group is None:
            return self.groups
        return {**self.groups, LOCAL: self.local_group}

    async def _apply(self, new: PolicySet, diff: PolicyDiff) -> None:
        """Bring the running node to ``new``; requests in flight keep their own policy."""
        await self.engine.apply(new, diff)
        if self.local_group is not None:
            self.local_group.queue = self.engine.queue
        if self._inbound is not None and new.node.listeners.inbound is not None:
            self._inbound.allow = frozenset(new.node.listeners.inbound.allow)
        if self.local_group is not None and new.local is not None:
            await self.local_group.update_policy(new.local)
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
        for proxy in (self.engine.proxy, self._inbound):
            if proxy is not None:
                proxy.close_tunnels("the node is draining")

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

    def _on_overload(self, reason: str, active: bool) -> None:
        self.bus.publish(OverloadChanged(reason=reason, active=active))

    def _apply_node_settings(self, policies: PolicySet) -> None:
        """Node settings that a reload may change beyond the engine's: the admin token, the
        inbound listener's limits, the listeners' rules, and the event loop's busy poll."""
        limits = policies.node.limits
        self.busy_poll.configure(policies.node.node.busy_poll)
        self.engine.proxy.overload = self.overload
        if self._inbound is not None:
            self._inbound.limits, self._inbound.overload = limits, self.overload
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

    # -- what the admin API shows ---------------------------------------------

    def health_checks(self) -> list[CheckResult]:
        lag_ms = self.loop_lag * 1000
        groups = list(self._all_groups().values())
        checks = [
            CheckResult(
                "event-loop",
                "liveness",
                True,
                self.loop_lag < MAX_LOOP_LAG,
                f"loop lag {lag_ms:.1f} ms",
            ),
            CheckResult(
                "supervisors",
                "liveness",
                True,
                all(group.supervising for group in groups),
                f"{sum(group.supervising for group in groups)} of {len(groups)} upstream "
                "group(s) supervised",
            ),
            CheckResult(
                "listeners",
                "readiness",
                True,
                self.listening,
                "bound" if self.listening else "not bound yet",
            ),
            CheckResult(
                "policies", "readiness", True, True, f"version {self.policies.version} in force"
            ),
            CheckResult(
                "drain",
                "readiness",
                True,
                not self.draining,
                "draining" if self.draining else "taking traffic",
            ),
        ]
        if self.tls is not None:
            material = self.tls.material
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
        for name, group in sorted(self.groups.items()):
            endpoints = group.endpoints.endpoints
            healthy_count = group.endpoint_states()["healthy"]
            healthy, message = True, f"{healthy_count} of {len(endpoints)} endpoint(s) healthy"
            if group.failed:
                healthy, message = False, "its actors are crash-looping"
            elif not healthy_count:
                healthy = False
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
        if uses_queue(self.policies):
            checks.append(
                CheckResult(
                    "queue",
                    "readiness",
                    True,
                    self.queue is not None,
                    self.queue_error or "the queue database is open",
                )
            )
        checks.extend(self.checks.results())
        return checks

    async def queue_report(self, upstream: str) -> dict[str, Any] | None:
        queue = self.queue
        if queue is None or upstream not in self._all_groups():
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
        if self.queue is None:
            return None
        found = await self.queue.run(self.queue.spool.get, upstream, entry_id)
        if found is None:
            return None
        entry, dead_because = found
        secret = {"authorization", "proxy-authorization", "cookie"}
        return {
            **entry.summary(),
            "state": "queued" if dead_because is None else "dead",
            "dead_because": dead_because,
            "headers": [[n, "(redacted)" if n in secret else v] for n, v in entry.headers],
            "body_preview": entry.body[:256].decode("utf-8", errors="replace"),
        }

    async def queue_retry(self, upstream: str) -> int | None:
        if self.queue is None or upstream not in self._all_groups():
            return None
        return await self.queue.run(self.queue.spool.retry, upstream)

    async def queue_purge(self, upstream: str) -> int | None:
        if self.queue is None or upstream not in self._all_groups():
            return None
        return await self.queue.run(self.queue.spool.purge, upstream)

    def metrics(self) -> bytes:
        return self._exposition.render()

    def forget_sessions(self, client: str) -> int:
        key = client.encode()
        return sum(group.forget_sessions(key) for group in self._all_groups().values())

    def force_breaker(self, upstream: str, state: str) -> dict[str, Any] | None:
        group = self.groups.get(upstream)
        if group is None:
            return None
        group.breaker.force(Override(state))
        log.warning("operator set the breaker of %s to %s", upstream, state)
        return {"upstream": upstream, **group.breaker.report()}

    def upstreams_report(self) -> dict[str, Any]:
        return {"upstreams": {name: group.report() for name, group in sorted(self.groups.items())}}

    def status_report(self) -> dict[str, Any]:
        policies = self.policies_report()
        upstreams = {
            name: {**group.report(), "rates": self.rates.rates(name)}
            for name, group in sorted(self.groups.items())
        }
        return {
            "node": self.policies.node.node.name,
            "version": policies["version"],
            "loaded_at": policies["loaded_at"],
            "last_reload_error": policies["last_error"],
            "draining": self.draining,
            "token_required": self._admin_token is not None,
            "upstreams": upstreams,
        }

    def policies_report(self) -> dict[str, Any]:
        reloader = self.reloader
        policies = reloader.current
        last_error = reloader.last_error
        return {
            "version": policies.version,
            "loaded_at": _iso(reloader.loaded_at),
            "directory": str(policies.directory),
            "files": dict(policies.files),
            "node": converter.unstructure(policies.node),
            "upstreams": {
                name: converter.unstructure(policy)
                for name, policy in sorted(policies.upstreams.items())
            },
            "reloads": dict(reloader.reloads),
            "last_error": None
            if last_error is None
            else {
                "at": _iso(last_error.at),
                "trigger": last_error.trigger,
                "errors": list(last_error.errors),
            },
        }


async def _drain_into(listener: H2Listener, timeout: float, results: list[bool]) -> None:
    results.append(await listener.drain(timeout))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
