"""A faithful fake of Consul's health API, built to its documentation (no Consul server
can be installed here): ``GET /v1/health/service/<service>`` with ``passing``, ``tag``,
``dc``, ACL tokens (``X-Consul-Token`` or ``?token=``), and blocking queries.

Blocking queries as documented: with ``index``, the request hangs until the
service's modify index passes it or ``wait`` (default 5m, at most 10m, "10s" or
"5m" form) runs out, plus up to wait/16 of jitter; ``X-Consul-Index`` carries
the index on every answer. Errors have Consul's shapes: 403 "ACL not found",
500 "No path to datacenter", 400 for a bad ``wait``.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import unquote

import attrs
import trio

from tests.support.asgi import answer_lifespan, request_of, respond

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
_WAIT = re.compile(r"^(\d+)(ms|s|m)$")


@attrs.define
class Registration:
    service: str
    id: str
    address: str
    port: int
    node: str = "node-1"
    node_address: str = "127.0.0.1"
    tags: list[str] = attrs.field(factory=list)
    meta: dict[str, str] = attrs.field(factory=dict)
    weight: int = 1
    status: str = "passing"  # passing | warning | critical

    def entry(self, datacenter: str) -> dict[str, Any]:
        return {
            "Node": {"Node": self.node, "Address": self.node_address, "Datacenter": datacenter},
            "Service": {
                "ID": self.id,
                "Service": self.service,
                "Tags": self.tags,
                "Address": self.address,
                "Meta": self.meta,
                "Port": self.port,
                "Weights": {"Passing": self.weight, "Warning": 1},
            },
            "Checks": [
                {"Node": self.node, "CheckID": "serfHealth", "Status": "passing"},
                {"Node": self.node, "CheckID": f"service:{self.id}", "Status": self.status},
            ],
        }


class FakeConsul:
    def __init__(self, *, token: str | None = None, datacenter: str = "dc1") -> None:
        self.token = token
        self.datacenter = datacenter
        self.raft_index = 10
        self.registrations: dict[str, Registration] = {}
        self.service_index: dict[str, int] = {}
        self.queries: list[dict[str, str]] = []  # the query parameters of every request
        self.failure: tuple[int, bytes] | None = None  # answer this instead, while set
        # Every blocking query returns at once with a new index and the same entries, as
        # when idempotent writes bump it (hashicorp/consul#4988): a client must not spin.
        self.churn = False
        self._changed = trio.Event()

    # -- what a test does to the registry ------------------------------------------

    def register(self, registration: Registration) -> None:
        self.registrations[registration.id] = registration
        self._touch(registration.service)

    def deregister(self, service_id: str) -> None:
        registration = self.registrations.pop(service_id)
        self._touch(registration.service)

    def update(self, service_id: str, **changes: Any) -> None:
        registration = self.registrations[service_id]
        for name, value in changes.items():
            setattr(registration, name, value)
        self._touch(registration.service)

    def restore_snapshot(self, index: int) -> None:
        """The cluster's indexes go back (a snapshot restore): clients must start over."""
        self.raft_index = index
        for service in self.service_index:
            self.service_index[service] = index
        self._wake()

    def _touch(self, service: str) -> None:
        self.raft_index += 1
        self.service_index[service] = self.raft_index
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- the HTTP API ----------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path, query, headers = request_of(scope)
        self.queries.append(query)
        status, body, index = await self._answer(path, query, headers)
        extra = [] if index is None else [(b"x-consul-index", str(index).encode())]
        await respond(send, status, body, extra)

    async def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, bytes, int | None]:
        if self.failure is not None:
            return (*self.failure, None)
        prefix = "/v1/health/service/"
        if not path.startswith(prefix):
            return 404, b"Not found", None
        if self.token is not None:
            given = headers.get("x-consul-token") or query.get("token")
            if given != self.token:
                return 403, b"ACL not found", None
        if query.get("dc", self.datacenter) != self.datacenter:
            return 500, b"No path to datacenter", None
        wait = _wait_of(query.get("wait"))
        if wait is None:
            return 400, b"Invalid wait time", None
        service = unquote(path[len(prefix) :])
        index = int(query.get("index", "0") or 0)
        if self.churn:
            self._touch(service)
        elif index:
            with trio.move_on_after(wait + random.uniform(0, wait / 16)):
                while self.service_index.get(service, 1) <= index:
                    await self._changed.wait()
        entries = [
            registration.entry(self.datacenter)
            for registration in self.registrations.values()
            if registration.service == service
            and ("passing" not in query or registration.status == "passing")
            and ("tag" not in query or query["tag"] in registration.tags)
        ]
        return 200, json.dumps(entries).encode(), self.service_index.get(service, 1)


def _wait_of(text: str | None) -> float | None:
    if text is None:
        return DEFAULT_WAIT
    match = _WAIT.match(text)
    if match is None:
        return None
    value = int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
    return min(value, MAX_WAIT)
