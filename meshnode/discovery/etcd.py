"""Endpoints from etcd: the keys under a prefix, listed and then watched, through etcd's
v3 JSON gateway (``/v3/kv/range``, and ``/v3/watch`` streaming over HTTP/1.1).

Each key's value is ``{"address": "host:port", "weight": 1, "metadata": {...}}``; a
value that is not such an entry is logged and left out. The watch starts at the
revision after the listing, so nothing between the two is missed; if etcd has
compacted that revision away it cancels the watch, and the keys are listed
again. Progress notifications keep an idle watch's connection known to be alive.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx

from meshnode.discovery.entries import parse_entry, some_or_garbage
from meshnode.discovery.http import json_object, registry_client
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import Endpoint, EtcdDiscovery

log = logging.getLogger(__name__)

# etcd sends a progress notification every 10 minutes by default; silence for longer
# than this means the connection is gone.
WATCH_SILENCE = 660.0


class EtcdSource:
    def __init__(self, policy: EtcdDiscovery, upstream: str) -> None:
        self._url = policy.etcd_url.rstrip("/")
        prefix = policy.prefix or f"/meshnode/services/{upstream}/"
        self._range = {"key": _b64(prefix.encode()), "range_end": _b64(_prefix_end(prefix))}
        self.description = f"etcd {self._url} prefix {prefix}"

    async def watch(self, found: Found) -> None:
        async with registry_client(read_timeout=WATCH_SILENCE) as client:
            while True:
                revision, entries = await self._list(client)
                found(self._endpoints(entries))
                await self._follow(client, revision + 1, entries, found)
                log.info("%s: revision %d was compacted; listing again", self.description, revision)

    async def _list(self, client: httpx.AsyncClient) -> tuple[int, dict[str, Endpoint | None]]:
        answer = await self._post(client, "/v3/kv/range", self._range)
        entries = {kv["key"]: self._entry(kv) for kv in answer.get("kvs", [])}
        return _revision(answer), entries

    async def _follow(
        self,
        client: httpx.AsyncClient,
        start: int,
        entries: dict[str, Endpoint | None],
        found: Found,
    ) -> None:
        """Apply the watch's events until etcd cancels it for compaction."""
        request = {
            "create_request": {**self._range, "start_revision": str(start), "progress_notify": True}
        }
        async with client.stream("POST", f"{self._url}/v3/watch", json=request) as response:
            if response.status_code != 200:
                raise DiscoveryError(f"etcd watch answered {response.status_code}")
            async for line in response.aiter_lines():
                result = json_object(line, "etcd").get("result", {})
                if result.get("canceled"):
                    if "compact_revision" in result:
                        return
                    raise DiscoveryError(f"etcd cancelled the watch: {result.get('cancel_reason')}")
                events = result.get("events", [])
                for event in events:
                    kv = event.get("kv", {})
                    if event.get("type") == "DELETE":
                        entries.pop(kv.get("key"), None)
                    else:
                        entries[kv.get("key")] = self._entry(kv)
                if events:
                    found(self._endpoints(entries))
        raise DiscoveryError("etcd closed the watch")

    async def _post(self, client: httpx.AsyncClient, path: str, body: object) -> dict[str, Any]:
        response = await client.post(f"{self._url}{path}", json=body)
        if response.status_code != 200:
            raise DiscoveryError(
                f"etcd {path} answered {response.status_code}: {response.text[:200]}"
            )
        return json_object(response.text, "etcd")

    def _entry(self, kv: dict[str, Any]) -> Endpoint | None:
        key = base64.b64decode(kv.get("key", "")).decode(errors="replace")
        try:
            value = json.loads(base64.b64decode(kv.get("value", "")))
        except ValueError:
            log.error("discovery: etcd key %s skipped: its value is not JSON", key)
            return None
        return parse_entry(value, f"etcd key {key}")

    def _endpoints(self, entries: dict[str, Endpoint | None]) -> list[Endpoint]:
        endpoints = [endpoint for endpoint in entries.values() if endpoint is not None]
        return some_or_garbage(endpoints, len(entries) - len(endpoints), self.description)


def _revision(answer: dict[str, Any]) -> int:
    try:
        return int(answer["header"]["revision"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DiscoveryError("etcd answered without a revision") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_end(prefix: str) -> bytes:
    """The end of the key range that holds every key starting with ``prefix`` (etcd's rule:
    the prefix with its last byte incremented)."""
    end = bytearray(prefix.encode())
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"  # every key
    end[-1] += 1
    return bytes(end)


def source(policy: EtcdDiscovery, upstream: str) -> EtcdSource:
    """The backend's source (see ``discovery.backends.make_source``)."""
    return EtcdSource(policy, upstream)
