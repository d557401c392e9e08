"""The admin API of ``meshnode serve --workers N``: one node's API over N workers.

Health from every worker, ``/metrics`` summed over the workers (amounts summed, states
at their worst), ``/admin/upstreams`` combined (and per worker), ``/admin/workers``, and
every command (reload, drain, breakers, sessions, queues) sent to all workers; the
status page and ``/admin/policies`` are the first worker's, and ``/admin/events`` relays
every worker's events, each marked with its pid. The parent process (``workers.py``)
serves these routes and supplies its workers through ``Fleet``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import attrs
import httpx
import trio
import trio_websocket
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshnode.admin.http import AdminRequest, AdminResponse, Handler
from meshnode.resilience.core.health import CheckResult, CheckType, health_report

log = logging.getLogger(__name__)

# Gauges that are a state, not an amount: the workers' worst (highest) is reported.
_WORST_GAUGES = frozenset({"meshnode_breaker_state", "meshnode_overload_active"})


class WorkerView(Protocol):
    """A worker as the fleet's admin API sees it."""

    index: int
    pid: int | None
    admin: str | None  # "127.0.0.1:PORT" while it is ready
    restarts: int

    def to_json(self) -> dict[str, Any]: ...


class Fleet(Protocol):
    """What the admin API needs of the parent process."""

    draining: bool

    @property
    def workers(self) -> Sequence[WorkerView]: ...

    def status_line(self) -> str: ...

    def start_draining(self) -> None: ...


class FleetAdmin:
    def __init__(self, fleet: Fleet, client: httpx.AsyncClient) -> None:
        """``client`` asks the workers' own admin listeners."""
        self._fleet = fleet
        self._client = client

    def _ready(self) -> list[WorkerView]:
        return [worker for worker in self._fleet.workers if worker.admin is not None]

    async def _each(
        self, request: AdminRequest, path: str | None = None
    ) -> list[tuple[WorkerView, httpx.Response]]:
        """The same request to every ready worker, concurrently."""
        answers: list[tuple[WorkerView, httpx.Response]] = []
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        target = path or request.path + (f"?{request.query}" if request.query else "")

        async def ask(worker: WorkerView) -> None:
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
            for worker in self._ready():
                nursery.start_soon(ask, worker)
        return sorted(answers, key=lambda answer: answer[0].index)

    def routes(self) -> dict[tuple[str, str], Handler]:
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
                for worker in self._fleet.workers
            ]
            fleet = self._fleet
            checks.append(
                CheckResult("drain", "readiness", True, not fleet.draining, fleet.status_line())
            )
            status, body = health_report(checks, kind)
            return AdminResponse.json(status, body)

        async def metrics(request: AdminRequest) -> AdminResponse:
            texts = [response.text for _, response in await self._each(request)]
            return AdminResponse(200, sum_metrics(texts, self._fleet.workers), _METRICS_TYPE)

        async def workers(_: AdminRequest) -> AdminResponse:
            return AdminResponse.json(200, {"workers": [w.to_json() for w in self._fleet.workers]})

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
                self._fleet.start_draining()
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

    async def relay_events(self, websocket: trio_websocket.WebSocketConnection) -> None:
        """Every worker's events, each marked with the worker's pid."""
        async with trio.open_nursery() as nursery:
            for worker in self._ready():
                nursery.start_soon(self._relay_from, worker, websocket)

    async def _relay_from(
        self, worker: WorkerView, websocket: trio_websocket.WebSocketConnection
    ) -> None:
        async with trio_websocket.open_websocket_url(f"ws://{worker.admin}/admin/events") as source:
            while True:
                event = json.loads(await source.get_message())
                event["worker"] = worker.pid
                await websocket.send_message(json.dumps(event))


_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def sum_metrics(texts: Iterable[str], workers: Sequence[WorkerView]) -> bytes:
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
