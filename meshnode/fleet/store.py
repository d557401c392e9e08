"""The fleet's store: etcd (its v3 JSON gateway) or Consul (its KV, transaction and session
APIs), behind one small interface, under one key prefix.

Keys under the prefix (docs/fleet.md):

    versions/<version>/<file>   a pushed policy version's upstream files, never changed
    current                     the version every node runs
    canary/<node>               a version one node runs instead, while a rollout waits on it
    registry/<node>             what a node reports (JSON), alive while its lease or session is

Reads are bounded (``MAX_READ``): a store that answers with megabytes of garbage is
refused with an error that says so, and the node keeps what it had.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import httpx

from meshnode.discovery.http import registry_client
from meshnode.policy.checks import store_url_problem
from meshnode.policy.models import FleetPolicy

MAX_READ = 4 * 1024 * 1024  # bytes of one answer from the store
WATCH_SILENCE = 660.0  # seconds a watch may hear nothing (etcd's progress every 10 minutes)
CONSUL_WAIT = "5m"  # how long a Consul blocking query waits for a change


class StoreError(Exception):
    """The store could not be reached, refused, or answered something unusable."""


class StoreGarbage(StoreError):
    """The store answered, with something too large or not what it should be."""


@attrs.frozen
class StoreAccess:
    """Where the store is and how to reach it: TLS material and tokens come from files,
    never from a command line (where ``ps`` would show them)."""

    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = None

    @classmethod
    def of(cls, url: str, fleet: FleetPolicy, directory: Path | None = None) -> StoreAccess:
        """From node.toml's ``[fleet]`` (its files relative to ``directory``)."""

        def path(name: str | None) -> str | None:
            return None if name is None or directory is None else str(directory / name)

        return cls(
            url, path(fleet.ca_file), path(fleet.cert_file), path(fleet.key_file),
            path(fleet.token_file),
        )  # fmt: skip

    @property
    def prefix(self) -> str:
        return "/" + urllib.parse.urlsplit(self.url).path.strip("/") + "/"


class Registration(Protocol):
    async def update(self, value: bytes) -> None: ...

    async def keep_alive(self) -> None: ...


class Store(Protocol):
    """One store, keys relative to the access URL's prefix."""

    description: str

    async def read(self, under: str) -> tuple[int, dict[str, bytes]]:
        """Every key under ``under`` with its value, and the store's index (revision)."""

    async def wait_change(self, since: int) -> int:
        """Return once a key outside ``registry/`` changed after index ``since``."""

    async def commit(self, puts: Mapping[str, bytes], deletes: tuple[str, ...] = ()) -> None:
        """Write and delete keys in one transaction: all of it, or none."""

    async def register(self, key: str, value: bytes, ttl: float) -> Registration:
        """Write ``key`` for as long as ``keep_alive`` is called within ``ttl``."""


@asynccontextmanager
async def open_store(access: StoreAccess) -> AsyncIterator[Store]:
    problem = store_url_problem(access.url)
    if problem is not None:
        raise StoreError(problem)
    parts = urllib.parse.urlsplit(access.url)
    scheme = "https" if access.ca_file else "http"
    base = f"{scheme}://{parts.netloc}"
    client_cert = (
        (access.cert_file, access.key_file) if access.cert_file and access.key_file else None
    )
    try:
        client = registry_client(
            read_timeout=WATCH_SILENCE, ca_file=access.ca_file, client_cert=client_cert
        )
    except (OSError, ValueError) as exc:
        raise StoreError(f"TLS material for {access.url}: {exc}") from exc
    async with client:
        if parts.scheme == "etcd":
            yield EtcdStore(client, base, access.prefix)
        else:
            token = _read_token(access.token_file)
            yield ConsulStore(client, base, access.prefix, token)


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise StoreError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc


async def _bounded(response: httpx.Response, what: str) -> bytes:
    """The body of ``response``, refused past ``MAX_READ`` bytes."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_READ:
            raise StoreGarbage(f"{what} answered more than {MAX_READ // 1024 // 1024} MiB: refused")
    return bytes(body)


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise StoreGarbage(f"{what} answered something that is not JSON: {exc}") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's end of the range holding every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    end[-1] += 1
    return bytes(end)


class EtcdStore:
    def __init__(self, client: httpx.AsyncClient, base: str, prefix: str) -> None:
        self._client = client
        self._base = base
        self._prefix = prefix.encode()
        self.description = f"etcd {base}{prefix}"

    async def _call(self, path: str, body: object) -> Any:
        what = f"{self.description} ({path})"
        try:
            async with self._client.stream("POST", self._base + path, json=body) as response:
                answer = await _bounded(response, what)
        except httpx.HTTPError as exc:
            raise StoreError(f"{what}: {exc or type(exc).__name__}") from exc
        if response.status_code != 200:
            raise StoreError(f"{what} answered {response.status_code}: {answer[:200]!r}")
        found = _json(answer, what)
        if not isinstance(found, dict):
            raise StoreError(f"{what} answered JSON that is not an object")
        return found

    async def read(self, under: str) -> tuple[int, dict[str, bytes]]:
        start = self._prefix + under.encode()
        answer = await self._call(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_prefix_end(start))}
        )
        try:
            revision = int(answer["header"]["revision"])
            kvs = {
                base64.b64decode(kv["key"])[len(self._prefix) :].decode(): base64.b64decode(
                    kv.get("value", "")
                )
                for kv in answer.get("kvs", [])
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.description} answered a range it cannot be read as") from exc
        return revision, kvs

    async def wait_change(self, since: int) -> int:
        """Watch ``canary/`` and ``current`` (the keys a rollout moves; ``versions/`` are
        written in the same transactions) from the revision after ``since``."""
        request = {
            "create_request": {
                "key": _b64(self._prefix + b"canary/"),
                "range_end": _b64(self._prefix + b"registry/"),  # canary/..., current
                "start_revision": str(since + 1),
                "progress_notify": True,
            }
        }
        what = f"{self.description} (watch)"
        try:
            async with self._client.stream(
                "POST", self._base + "/v3/watch", json=request
            ) as response:
                if response.status_code != 200:
                    raise StoreError(f"{what} answered {response.status_code}")
                async for line in response.aiter_lines():
                    if len(line) > MAX_READ:
                        raise StoreError(f"{what} sent more than {MAX_READ} bytes in one event")
                    result = _json(line.encode(), what).get("result", {})
                    if result.get("canceled"):
                        return since  # compacted, or cancelled: read again from the start
                    if result.get("events"):
                        return int(result["header"]["revision"])
        except httpx.HTTPError as exc:
            raise StoreError(f"{what}: {exc or type(exc).__name__}") from exc
        raise StoreError(f"{what}: etcd closed the watch")

    async def commit(self, puts: Mapping[str, bytes], deletes: tuple[str, ...] = ()) -> None:
        operations: list[dict[str, Any]] = [
            {"request_put": {"key": _b64(self._prefix + key.encode()), "value": _b64(value)}}
            for key, value in puts.items()
        ]
        for key in deletes:
            start = self._prefix + key.encode()
            ranged = {"key": _b64(start)}
            if key.endswith("/"):
                ranged["range_end"] = _b64(_prefix_end(start))
            operations.append({"request_delete_range": ranged})
        answer = await self._call("/v3/kv/txn", {"compare": [], "success": operations})
        if not answer.get("succeeded"):
            raise StoreError(f"{self.description}: the transaction did not succeed")

    async def register(self, key: str, value: bytes, ttl: float) -> Registration:
        grant = await self._call("/v3/lease/grant", {"TTL": max(1, round(ttl))})
        lease = str(grant.get("ID", ""))
        if not lease:
            raise StoreError(f"{self.description}: no lease granted")
        registration = _EtcdRegistration(self, self._prefix + key.encode(), lease)
        await registration.update(value)
        return registration


class _EtcdRegistration:
    def __init__(self, store: EtcdStore, key: bytes, lease: str) -> None:
        self._store = store
        self._key = key
        self._lease = lease

    async def update(self, value: bytes) -> None:
        put = {"key": _b64(self._key), "value": _b64(value), "lease": self._lease}
        await self._store._call("/v3/kv/put", put)

    async def keep_alive(self) -> None:
        answer = await self._store._call("/v3/lease/keepalive", {"ID": self._lease})
        if int(answer.get("result", {}).get("TTL", 0)) <= 0:
            raise StoreError(f"{self._store.description}: the node's lease expired")


class ConsulStore:
    """Consul's KV (``/v1/kv``, blocking queries), transactions (``/v1/txn``) and sessions
    (``/v1/session``: a registry key is acquired by a session with a TTL, whose
    ``Behavior = "delete"`` removes it when the session ends)."""

    def __init__(
        self, client: httpx.AsyncClient, base: str, prefix: str, token: str | None
    ) -> None:
        self._client = client
        self._base = base
        self._prefix = prefix.lstrip("/")
        self._headers = {"X-Consul-Token": token} if token else {}
        self.description = f"consul {base}/{self._prefix}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        raw: bytes | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """``body`` is sent as JSON, ``raw`` as it is (a KV value)."""
        what = f"{self.description} ({method} {path})"
        try:
            async with self._client.stream(
                method,
                self._base + path,
                params=params,
                json=body,
                content=raw,
                headers=self._headers,
            ) as response:
                answer = await _bounded(response, what)
        except httpx.HTTPError as exc:
            raise StoreError(f"{what}: {exc or type(exc).__name__}") from exc
        if response.status_code not in (200, 404):
            raise StoreError(f"{what} answered {response.status_code}: {answer[:200]!r}")
        return response, answer

    async def _read(self, under: str, params: dict[str, str]) -> tuple[int, dict[str, bytes]]:
        response, answer = await self._call(
            "GET", f"/v1/kv/{self._prefix}{under}", params={"recurse": "true", **params}
        )
        try:
            index = int(response.headers.get("X-Consul-Index", "0"))
        except ValueError as exc:
            raise StoreError(f"{self.description}: X-Consul-Index is not a number") from exc
        if response.status_code == 404:
            return index, {}
        entries = _json(answer, self.description)
        if not isinstance(entries, list):
            raise StoreError(f"{self.description} answered JSON that is not a list of keys")
        try:
            found = {
                entry["Key"][len(self._prefix) :]: base64.b64decode(entry.get("Value") or "")
                for entry in entries
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.description} answered keys it cannot be read as") from exc
        return index, found

    async def read(self, under: str) -> tuple[int, dict[str, bytes]]:
        return await self._read(under, {})

    async def wait_change(self, since: int) -> int:
        """A blocking query on the prefix; registry writes wake it too, and a wake-up that
        changed nothing a node reads is read again at no harm."""
        index, _ = await self._read("", {"index": str(since), "wait": CONSUL_WAIT})
        return index if index > since else since  # Consul: an index going back resets

    async def commit(self, puts: Mapping[str, bytes], deletes: tuple[str, ...] = ()) -> None:
        operations: list[dict[str, Any]] = [
            {"KV": {"Verb": "set", "Key": self._prefix + key, "Value": _b64(value)}}
            for key, value in puts.items()
        ]
        operations += [
            {
                "KV": {
                    "Verb": "delete-tree" if key.endswith("/") else "delete",
                    "Key": self._prefix + key,
                }
            }
            for key in deletes
        ]
        response, answer = await self._call("PUT", "/v1/txn", body=operations)
        if response.status_code != 200:
            raise StoreError(f"{self.description}: the transaction failed: {answer[:200]!r}")

    async def register(self, key: str, value: bytes, ttl: float) -> Registration:
        session_ttl = f"{max(10, round(ttl))}s"  # Consul's floor for a session TTL
        body = {"Name": f"meshnode {key}", "TTL": session_ttl, "Behavior": "delete"}
        _, answer = await self._call("PUT", "/v1/session/create", body=body)
        session = _json(answer, self.description)
        if not isinstance(session, dict) or "ID" not in session:
            raise StoreError(f"{self.description}: no session created")
        registration = _ConsulRegistration(self, self._prefix + key, str(session["ID"]))
        await registration.update(value)
        return registration


class _ConsulRegistration:
    def __init__(self, store: ConsulStore, key: str, session: str) -> None:
        self._store = store
        self._key = key
        self._session = session

    async def update(self, value: bytes) -> None:
        """Write the key as this session's lock (``acquire``), so that it goes with it."""
        _, answer = await self._store._call(
            "PUT", f"/v1/kv/{self._key}", params={"acquire": self._session}, raw=value
        )
        if answer.strip() != b"true":
            raise StoreError(f"{self._store.description}: {self._key} is held by another session")

    async def keep_alive(self) -> None:
        response, _ = await self._store._call("PUT", f"/v1/session/renew/{self._session}")
        if response.status_code == 404:
            raise StoreError(f"{self._store.description}: the node's session expired")
