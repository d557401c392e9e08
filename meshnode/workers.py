"""Theory of operation: ``meshnode serve --workers N``, one node per core.

The parent reserves the listening ports (a socket bound with SO_REUSEPORT and
never listening holds each one, port 0 resolved once), then runs N worker
processes, each a whole node (``serve --worker``) listening on those ports
with SO_REUSEPORT, so the kernel spreads new connections among them. Each
worker also has an admin listener of its own on loopback, which it announces
on its stdout once ready; only the parent talks to it.

The parent:

* supervises: a worker that exits is started again after a backoff (0.5 s
  doubling to 30 s, back to 0.5 s once a worker has run a minute);
* serves the admin API on node.toml's address, one node's API over its workers
  (``admin/fleet.py``);
* is the one that talks to systemd (workers run without ``NOTIFY_SOCKET``);
* forwards SIGHUP to every worker; on SIGTERM or SIGINT it drains them all
  (each finishes its requests within ``drain_timeout``) and exits 0; a second
  signal stops them at once.

State stays per worker: breaker counts, rate-limit buckets, retry budgets,
outlier ejections, session affinity, and each worker's queue database
(``queue-<worker>.db``). Configured limits apply per worker, so a
``requests_per_second`` of 100 admits up to 100 x N across the node.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import trio

from meshnode.admin.fleet import FleetAdmin
from meshnode.admin.http import AdminHTTPServer
from meshnode.admin.origins import ADMIN_HEADER, allowed_hosts
from meshnode.notify import Notifier
from meshnode.policy import Address, PolicySet
from meshnode.policy.load import read_token
from meshnode.resilience.core.backoff import RestartBackoff
from meshnode.worker_process import READY_PREFIX

log = logging.getLogger(__name__)

RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts from the initial backoff
WORKER_TIMEOUT = 10.0  # seconds the parent waits for one worker's admin answer


@attrs.define
class Worker:
    index: int
    pid: int | None = None
    admin: str | None = None  # "127.0.0.1:PORT" while it is ready
    restarts: int = 0
    process: trio.Process | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "pid": self.pid,
            "ready": self.admin is not None,
            "admin": self.admin,
            "restarts": self.restarts,
        }


class Parent:
    def __init__(
        self,
        policies: PolicySet,
        count: int,
        worker_args: list[str],
        notifier: Notifier | None = None,
    ) -> None:
        self.policies = policies
        self.workers = [Worker(index) for index in range(count)]
        self._worker_args = worker_args  # log options and the like, passed on
        self.notifier = notifier if notifier is not None else Notifier()
        self.draining = False
        self._reserved: list[socket.socket] = []
        self._ready_changed = trio.Event()
        # The workers' admin listeners take changes only with the admin header.
        self._client = httpx.AsyncClient(timeout=WORKER_TIMEOUT, headers={ADMIN_HEADER: "1"})

    # -- lifecycle -----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        node = self.policies.node
        outbound = self._reserve(node.listeners.outbound.address)
        inbound = self._reserve(node.listeners.inbound.address) if node.listeners.inbound else None
        bindings = ["--bind-outbound", str(outbound)]
        if inbound is not None:
            bindings += ["--bind-inbound", str(inbound)]
        token_file = node.admin.token_file
        token = None if token_file is None else read_token(self.policies.directory, token_file)
        fleet = FleetAdmin(self, self._client)
        admin = AdminHTTPServer(
            fleet.routes(),
            {"/admin/events": fleet.relay_events},
            token=lambda: token,
            allowed_hosts=lambda: allowed_hosts(self.policies.node.admin),
        )
        try:
            async with self._client, trio.open_nursery() as nursery:
                await nursery.start(self._watch_signals)
                admin_addresses = await nursery.start(admin.serve, node.admin.address)
                async with trio.open_nursery() as runners:  # they return once drained
                    for worker in self.workers:
                        runners.start_soon(self._keep_running, worker, bindings)
                    while not all(worker.admin for worker in self.workers):
                        await self._ready_changed.wait()
                    log.info(
                        "meshnode ready: outbound=%s admin=%s inbound=%s workers=%d",
                        outbound,
                        ",".join(map(str, admin_addresses)),
                        inbound or "-",
                        len(self.workers),
                    )
                    task_status.started([outbound, *admin_addresses])
                    self.notifier.ready(self.status_line())
                    nursery.start_soon(self.notifier.watchdog)
                log.info("every worker has drained; exiting")
                nursery.cancel_scope.cancel()
        finally:
            for reserved in self._reserved:
                reserved.close()

    def _reserve(self, address: Address) -> Address:
        """Hold ``address`` (port 0 picks one) for the workers: bound, shared, never listening."""
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((address.host, address.port))
        self._reserved.append(holder)
        return Address(address.host, holder.getsockname()[1])

    def status_line(self) -> str:
        ready = sum(worker.admin is not None for worker in self.workers)
        state = "draining" if self.draining else "serving"
        return f"{state} with {ready} of {len(self.workers)} workers ready"

    async def _keep_running(self, worker: Worker, bindings: list[str]) -> None:
        backoff = RestartBackoff(RESTART_INITIAL, RESTART_MAX)
        while not self.draining:
            started = trio.current_time()
            code = await self._run_worker(worker, bindings)
            if self.draining:
                return
            if trio.current_time() - started >= STABLE_AFTER:
                backoff.reset()
            wait = backoff.next()
            worker.restarts += 1
            log.error(
                "worker %d (pid %s) exited with %s; starting it again in %.1fs",
                worker.index,
                worker.pid,
                code,
                wait,
            )
            self.notifier.status(self.status_line())
            await trio.sleep(wait)

    async def _run_worker(self, worker: Worker, bindings: list[str]) -> int:
        command = [
            sys.executable,
            "-m",
            "meshnode",
            "serve",
            "--policies",
            str(self.policies.directory),
            "--worker",
            str(worker.index),
            *bindings,
            *self._worker_args,
        ]
        environment = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    check=False,
                    env=environment,
                    deliver_cancel=_kill,
                )
            )
            worker.process, worker.pid = process, process.pid
            assert process.stdout is not None
            async for line in _lines(process.stdout):
                if line.startswith(READY_PREFIX):
                    worker.admin = json.loads(line[len(READY_PREFIX) :])["admin"]
                    self._pulse_ready()
            await process.wait()
        worker.admin, worker.process = None, None
        self._pulse_ready()
        return -1 if process.returncode is None else process.returncode

    def _pulse_ready(self) -> None:
        self._ready_changed.set()
        self._ready_changed = trio.Event()

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for received in signals:
                if received == signal.SIGHUP:
                    self.notifier.reloading()
                    self._signal_workers(signal.SIGHUP)
                    self.notifier.ready(self.status_line())
                elif not self.draining:
                    self.draining = True
                    self.notifier.stopping(self.status_line())
                    log.info("draining %d workers", len(self.workers))
                    self._signal_workers(signal.SIGTERM)
                else:
                    log.warning("second signal: stopping the workers now")
                    self._signal_workers(signal.SIGKILL)

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    # -- the admin API ---------------------------------------------------------------

    def start_draining(self) -> None:
        """An operator asked the node to drain (the workers were told)."""
        self.draining = True
        self.notifier.status(self.status_line())


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")


async def _kill(process: trio.Process) -> None:
    process.kill()
