"""The node: listeners, the upstream pool and the admin plane under one nursery.

``Node.run`` reports the bound addresses through ``task_status`` once the
listeners accept and the policies are in force, so "started" means ready.
SIGINT/SIGTERM (or ``request_drain``) drain: readiness turns 503, the outbound
listener stops accepting and sends GOAWAY, in-flight requests get up to
``drain_timeout`` to finish, then the node exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import signal

import attrs
import trio

from meshnode.admin.health import CheckResult, health_report
from meshnode.admin.http import AdminHTTPServer, AdminRequest, AdminResponse, Handler
from meshnode.net.listener import H2Listener
from meshnode.net.pool import UpstreamPool
from meshnode.policy import Address, PolicySet
from meshnode.proxy.forward import Proxy
from meshnode.proxy.routing import RouteTable
from meshnode.proxy.upstreams import upstreams_from

log = logging.getLogger(__name__)


@attrs.frozen
class NodeAddresses:
    outbound: list[Address]
    admin: list[Address]


class Node:
    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.listening = False
        self.draining = False
        self._drain_requested = trio.Event()

    def request_drain(self) -> None:
        self._drain_requested.set()

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        policy = self.policies.node
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(self._watch_signals, nursery.cancel_scope)
            pool = UpstreamPool(nursery)
            proxy = Proxy(
                RouteTable.build(self.policies.upstreams),
                upstreams_from(self.policies.upstreams),
                pool,
            )
            outbound = H2Listener("outbound", proxy.handle)
            outbound_addresses = await nursery.start(
                outbound.serve, policy.listeners.outbound.address
            )
            admin = AdminHTTPServer(self._admin_routes())
            admin_addresses = await nursery.start(admin.serve, policy.admin.address)
            self.listening = True
            addresses = NodeAddresses(outbound_addresses, admin_addresses)
            log.info(
                "meshnode ready: outbound=%s admin=%s policies=%s version=%s",
                ",".join(map(str, outbound_addresses)),
                ",".join(map(str, admin_addresses)),
                self.policies.directory,
                self.policies.version,
            )
            task_status.started(addresses)

            await self._drain_requested.wait()
            self.draining = True
            log.info("draining: up to %gs for requests in flight", policy.node.drain_timeout)
            finished = await outbound.drain(policy.node.drain_timeout)
            pool.close_all()
            log.info("drained %s; stopping", "cleanly" if finished else "with requests cut short")
            nursery.cancel_scope.cancel()

    async def _watch_signals(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self._drain_requested.is_set():
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.info("%s received", signal.Signals(signum).name)
                self.request_drain()

    def health_checks(self) -> list[CheckResult]:
        return [
            CheckResult("event-loop", "liveness", True, True, "answering"),
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

    def _admin_routes(self) -> dict[tuple[str, str], Handler]:
        def health(kind: str | None) -> Handler:
            async def answer(_: AdminRequest) -> AdminResponse:
                status, body = health_report(self.health_checks(), kind)  # type: ignore[arg-type]
                return AdminResponse.json(status, body)

            return answer

        return {
            ("GET", "/health/live"): health("liveness"),
            ("GET", "/health/ready"): health("readiness"),
            ("GET", "/health"): health(None),
        }
