"""A faithful fake of Consul's health, KV, transaction and session APIs, built to their
documentation (no Consul server can be installed here): ``GET /v1/health/service/<service>``
with ``passing``, ``tag``, ``dc``, ACL tokens (``X-Consul-Token`` or ``?token=``), and
blocking queries; ``/v1/kv/<key>`` (GET with ``recurse`` and blocking queries, 404 when no
key matches; PUT of a raw value, with ``acquire=<session>``: "true" or "false"); ``PUT
/v1/txn`` (``KV`` operations ``set``, ``delete``, ``delete-tree``, all or none); ``PUT
/v1/session/create`` (``TTL``, ``Behavior`` "delete" or "release") and ``PUT
/v1/session/renew/<id>`` (404 once the session is gone). A session not renewed within its
TTL is invalidated (Consul allows itself up to twice the TTL; the fake takes the TTL):
the keys it holds are deleted or released.

Blocking queries as documented: with ``index``, the request hangs until the
service's modify index passes it or ``wait`` (default 5m, at most 10m, "10s" or
"5m" form) runs out, plus up to wait/16 of jitter; ``X-Consul-Index`` carries
the index on every answer. Errors have Consul's shapes: 403 "ACL not found",
500 "No path to datacenter", 400 for a bad ``wait``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import uuid
from typing import Any
from urllib.parse import unquote

import attrs
import trio

from tests.support.asgi import answer_lifespan, request_of, respond

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
_WAIT = re.compile(r"^(\d+)(ms|s|m)$")


@attrs.define
class KVEntry:
    value: bytes
    create_index: int
    modify_index: int
    session: str | None = None

    def to_json(self, key: str) -> dict[str, Any]:
        return {
            "Key": key,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "Flags": 0,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "LockIndex": 1 if self.session else 0,
            **({"Session": self.session} if self.session else {}),
        }


@attrs.define
class Session:
    ttl: float
    behavior: str
    renewed_at: float


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
        self.kv: dict[str, KVEntry] = {}
        self.kv_index = 1  # the index of the last KV write (deletions included)
        self.sessions: dict[str, Session] = {}

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
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.failure is not None:
            status, body, index = (*self.failure, None)
        elif (
            self.token is not None
            and (headers.get("x-consul-token") or query.get("token")) != self.token
        ):
            status, body, index = 403, b"ACL not found", None
        elif path.startswith(("/v1/kv/", "/v1/txn", "/v1/session/")):
            status, body, index = await self._store(scope["method"], path, query, body)
        else:
            status, body, index = await self._answer(path, query, headers)
        extra = [] if index is None else [(b"x-consul-index", str(index).encode())]
        await respond(send, status, body, extra)

    async def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, bytes, int | None]:
        prefix = "/v1/health/service/"
        if not path.startswith(prefix):
            return 404, b"Not found", None
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

    # -- KV, transactions, sessions ----------------------------------------------------

    def _kv_touch(self) -> None:
        self.raft_index += 1
        self.kv_index = self.raft_index
        self._wake()

    def _set(self, key: str, value: bytes, session: str | None = None) -> None:
        entry = self.kv.get(key)
        created = entry.create_index if entry is not None else self.raft_index + 1
        self.kv[key] = KVEntry(value, created, self.raft_index + 1, session)
        self._kv_touch()

    async def _store(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, bytes, int | None]:
        _expire(self)
        if path.startswith("/v1/kv/"):
            key = unquote(path[len("/v1/kv/") :])
            if method == "GET":
                return await self._kv_get(key, query)
            session = query.get("acquire")
            if session is not None:
                holder = self.kv.get(key)
                if session not in self.sessions or (
                    holder is not None and holder.session not in (None, session)
                ):
                    return 200, b"false", None
            self._set(key, body, session)
            return 200, b"true", None
        if path == "/v1/txn":
            return self._txn(json.loads(body or b"[]"))
        if path == "/v1/session/create":
            spec = json.loads(body or b"{}")
            ttl = _wait_of(spec.get("TTL", "0s")) or 0.0
            session_id = str(uuid.uuid4())
            behavior = spec.get("Behavior", "release")
            self.sessions[session_id] = Session(ttl, behavior, trio.current_time())
            return 200, json.dumps({"ID": session_id}).encode(), None
        if path.startswith("/v1/session/renew/"):
            found = self.sessions.get(path.rsplit("/", 1)[1])
            if found is None:
                return 404, b"Session id not found", None
            found.renewed_at = trio.current_time()
            return 200, b"[]", None
        return 404, b"Not found", None

    async def _kv_get(self, key: str, query: dict[str, str]) -> tuple[int, bytes, int | None]:
        wait = _wait_of(query.get("wait"))
        if wait is None:
            return 400, b"Invalid wait time", None
        index = int(query.get("index", "0") or 0)
        if index:
            with trio.move_on_after(wait + random.uniform(0, wait / 16)):
                while self.kv_index <= index:
                    await self._changed.wait()
                    _expire(self)
        recurse = "recurse" in query
        found = [
            entry.to_json(name)
            for name, entry in sorted(self.kv.items())
            if (name.startswith(key) if recurse else name == key)
        ]
        if not found:
            return 404, b"", self.kv_index
        return 200, json.dumps(found).encode(), self.kv_index

    def _txn(self, operations: list[dict[str, Any]]) -> tuple[int, bytes, int | None]:
        """All or none: every operation is checked before any is applied."""
        checked = []
        for number, operation in enumerate(operations):
            kv = operation.get("KV", {})
            verb, key = kv.get("Verb"), kv.get("Key")
            if verb not in ("set", "delete", "delete-tree") or not isinstance(key, str):
                error = {"OpIndex": number, "What": f"unknown KV verb {verb!r}"}
                return 409, json.dumps({"Errors": [error]}).encode(), None
            checked.append((verb, key, base64.b64decode(kv.get("Value") or "")))
        for verb, key, value in checked:
            if verb == "set":
                self._set(key, value)
            elif verb == "delete":
                self.kv.pop(key, None)
            else:
                for name in [name for name in self.kv if name.startswith(key)]:
                    del self.kv[name]
        self._kv_touch()
        return 200, json.dumps({"Results": [], "Errors": None}).encode(), None


def _wait_of(text: str | None) -> float | None:
    if text is None:
        return DEFAULT_WAIT
    match = _WAIT.match(text)
    if match is None:
        return None
    value = int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
    return min(value, MAX_WAIT)


def _expire(consul: FakeConsul) -> None:
    """Invalidate the sessions not renewed within their TTL, and their keys."""
    now = trio.current_time()
    for session_id, session in list(consul.sessions.items()):
        if now - session.renewed_at <= session.ttl:
            continue
        del consul.sessions[session_id]
        for key, entry in list(consul.kv.items()):
            if entry.session == session_id:
                if session.behavior == "delete":
                    del consul.kv[key]
                else:
                    entry.session = None
                consul._kv_touch()
