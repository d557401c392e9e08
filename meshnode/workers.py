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
* serves the admin API on node.toml's address: health from every worker,
  ``/metrics`` summed over the workers, ``/admin/upstreams`` combined (and per
  worker), ``/admin/workers``, and every command (reload, drain, breakers,
  sessions, queues) sent to all workers; the status page and ``/admin/policies``
  are the first worker's, and ``/admin/events`` relays every worker's events;
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
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import httpx
import trio
import trio_websocket
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshnode.admin.http import AdminHTTPServer, AdminRequest, AdminResponse, Handler
from meshnode.admin.origins import ADMIN_HEADER, allowed_hosts
from meshnode.notify import Notifier
from meshnode.policy import Address, PolicySet
from meshnode.policy.load import read_token
from meshnode.resilience.core.backoff import RestartBackoff
from meshnode.resilience.core.health import CheckResult, CheckType, health_report
from meshnode.worker_process import READY_PREFIX

log = logging.getLogger(__name__)

RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts from the initial backoff
WORKER_TIMEOUT = 10.0  # seconds the parent waits for one worker's admin answer
# Gauges that are a state, not an amount: the workers' worst (highest) is reported.
_WORST_GAUGES = frozenset({"meshnode_breaker_state", "meshnode_overload_active"})


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
        admin = AdminHTTPServer(
            self._routes(),
            {"/admin/events": self._relay_events},
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
                    self.notifier.ready(self._status_line())
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

    def _status_line(self) -> str:
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
            self.notifier.status(self._status_line())
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
                    self.notifier.ready(self._status_line())
                elif not self.draining:
                    self.draining = True
                    self.notifier.stopping(self._status_line())
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

    def _ready_workers(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.admin is not None]

    async def _each(
        self, request: AdminRequest, path: str | None = None
    ) -> list[tuple[Worker, httpx.Response]]:
        """The same request to every ready worker, concurrently."""
        answers: list[tuple[Worker, httpx.Response]] = []
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        target = path or request.path + (f"?{request.query}" if request.query else "")

        async def ask(worker: Worker) -> None:
            try:
                response = await self._client.request(
                    request.method,
                    f"http://{worker.admin}{target}",
                    headers=headers,
                    content=request.body,
                )
            except httpx.HTTPError as exc:
                log.warning("worker %d did not answer %s: %s", worker.index, target, exc)
                return
            answers.append((worker, response))

        async with trio.open_nursery() as nursery:
            for worker in self._ready_workers():
                nursery.start_soon(ask, worker)
        return sorted(answers, key=lambda answer: answer[0].index)

    def _routes(self) -> dict[tuple[str, str], Handler]:
        async def health(request: AdminRequest) -> AdminResponse:
            kinds: dict[str, CheckType] = {"/health/live": "liveness", "/health/ready": "readiness"}
            kind = kinds.get(request.path)
            answers = {w.index: r for w, r in await self._each(request)}
            checks = [
                CheckResult(
                    f"worker:{worker.index}",
                    "readiness",
                    True,
                    worker.index in answers and answers[worker.index].status_code == 200,
                    f"pid {worker.pid}: "
                    + (
                        "ready" if worker.index in answers else "not ready (starting or restarting)"
                    ),
                )
                for worker in self.workers
            ]
            checks.append(
                CheckResult("drain", "readiness", True, not self.draining, self._status_line())
            )
            status, body = health_report(checks, kind)
            return AdminResponse.json(status, body)

        async def metrics(request: AdminRequest) -> AdminResponse:
            texts = [response.text for _, response in await self._each(request)]
            return AdminResponse(200, sum_metrics(texts, self.workers), _METRICS_TYPE)

        async def workers(_: AdminRequest) -> AdminResponse:
            return AdminResponse.json(200, {"workers": [w.to_json() for w in self.workers]})

        async def upstreams(request: AdminRequest) -> AdminResponse:
            answers = await self._each(request)
            reports = {str(w.pid): r.json()["upstreams"] for w, r in answers}
            return AdminResponse.json(
                200, {"upstreams": combine(list(reports.values())), "workers": reports}
            )

        async def first(request: AdminRequest) -> AdminResponse:
            answers = await self._each(request)
            if not answers:
                return AdminResponse.json(503, {"error": "no worker is ready"})
            response = answers[0][1]
            return AdminResponse(
                response.status_code,
                response.content,
                response.headers.get("content-type", "application/json"),
                tuple(
                    (name, value)
                    for name, value in response.headers.items()
                    if name in ("content-security-policy", "x-content-type-options")
                ),
            )

        async def everyone(request: AdminRequest) -> AdminResponse:
            answers = await self._each(request)
            if request.path == "/admin/drain":
                self.draining = True
                self.notifier.status(self._status_line())
            if not answers:
                return AdminResponse.json(503, {"error": "no worker is ready"})
            status = max(response.status_code for _, response in answers)
            bodies = {str(w.pid): _json_or_text(r) for w, r in answers}
            return AdminResponse.json(status, {"workers": bodies, **_agreed(bodies.values())})

        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): health,
            ("GET", "/health/live"): health,
            ("GET", "/health/ready"): health,
            ("GET", "/metrics"): metrics,
            ("GET", "/admin/workers"): workers,
            ("GET", "/admin/upstreams"): upstreams,
        }
        for path in ("/", "/status/live", "/static/{name}", "/admin/policies"):
            routes["GET", path] = first
        for method, path in (
            ("POST", "/admin/reload"),
            ("POST", "/admin/drain"),
            ("DELETE", "/admin/sessions/{client}"),
            ("POST", "/admin/breakers/{upstream}"),
            ("GET", "/admin/queue/{upstream}"),
            ("GET", "/admin/queue/{upstream}/{id}"),
            ("POST", "/admin/queue/{upstream}/retry"),
            ("DELETE", "/admin/queue/{upstream}"),
        ):
            routes[method, path] = everyone
        return routes

    async def _relay_events(self, websocket: trio_websocket.WebSocketConnection) -> None:
        """Every worker's events, each marked with the worker's pid."""
        async with trio.open_nursery() as nursery:
            for worker in self._ready_workers():
                nursery.start_soon(self._relay_from, worker, websocket)

    async def _relay_from(
        self, worker: Worker, websocket: trio_websocket.WebSocketConnection
    ) -> None:
        async with trio_websocket.open_websocket_url(f"ws://{worker.admin}/admin/events") as source:
            while True:
                event = json.loads(await source.get_message())
                event["worker"] = worker.pid
                await websocket.send_message(json.dumps(event))


_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def sum_metrics(texts: Iterable[str], workers: list[Worker]) -> bytes:
    """The workers' expositions as one: amounts summed, states at their worst."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            known = families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if known.type == "gauge" and family.name in _WORST_GAUGES:
                    samples[key] = max(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    out: list[Metric] = []
    for name, family in families.items():
        merged = Metric(name, family.documentation, family.type, family.unit)
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
        out.append(merged)
    ready = Metric("meshnode_workers", "Worker processes by state.", "gauge")
    ready.add_sample(
        "meshnode_workers", {"state": "ready"}, sum(w.admin is not None for w in workers)
    )
    ready.add_sample("meshnode_workers", {"state": "down"}, sum(w.admin is None for w in workers))
    restarts = Metric("meshnode_worker_restarts", "Worker processes started again.", "counter")
    restarts.add_sample("meshnode_worker_restarts_total", {}, sum(w.restarts for w in workers))
    out += [ready, restarts]
    return generate_latest(_Registry(out))


@attrs.frozen
class _Registry:
    metrics: list[Metric]

    def collect(self) -> list[Metric]:
        return self.metrics


_MAX_KEYS = frozenset({"seconds_in_state", "ewma_latency_ms", "last_update", "failures"})


def combine(reports: list[Any], key: str = "") -> Any:
    """One report from the workers' reports of the same shape: amounts summed, times at
    their latest, endpoints merged by address, and what differs kept as a list."""
    if not reports:
        return None
    if all(isinstance(r, dict) for r in reports):
        keys = dict.fromkeys(k for r in reports for k in r)
        return {k: combine([r[k] for r in reports if k in r], k) for k in keys}
    if all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in reports):
        return max(reports) if key in _MAX_KEYS else sum(reports)
    if all(isinstance(r, list) for r in reports) and all(
        isinstance(item, dict) and "address" in item for r in reports for item in r
    ):
        by_address: dict[str, list[Any]] = {}
        for report in reports:
            for item in report:
                by_address.setdefault(item["address"], []).append(item)
        return [combine(items) for items in by_address.values()]
    if all(r == reports[0] for r in reports):
        return reports[0]
    return reports


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _agreed(bodies: Iterable[Any]) -> dict[str, Any]:
    """The fields every worker answered alike (so ``applied`` or ``version`` read as one)."""
    listed = [body for body in bodies if isinstance(body, dict)]
    if not listed:
        return {}
    return {k: v for k, v in listed[0].items() if all(b.get(k) == v for b in listed)}


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")


async def _kill(process: trio.Process) -> None:
    process.kill()
