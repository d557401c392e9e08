"""A faithful fake of the Kubernetes API for EndpointSlices (no API server can be
installed here), built to the documented list/watch semantics:

* ``GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`` with a
  ``labelSelector`` of ``kubernetes.io/service-name=<name>`` lists the slices and
  the collection's ``resourceVersion``.
* With ``watch=true&resourceVersion=<rv>`` it streams one JSON event per line
  (ADDED, MODIFIED, DELETED) for every change after ``rv``, BOOKMARK events
  when ``allowWatchBookmarks`` is set and ``bookmark()`` is called, and ends the
  stream after ``timeoutSeconds``. A version older than the history kept
  (``compact()``) gets an ERROR event with a 410 Status ("Expired").
* Every request needs ``Authorization: Bearer <token>`` with a token in
  ``tokens``; otherwise 401 with a Status body.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.support.asgi import answer_lifespan, request_of, respond

PREFIX = "/apis/discovery.k8s.io/v1/namespaces/"
SERVICE_LABEL = "kubernetes.io/service-name"


def endpoint_slice(
    name: str,
    service: str,
    port: int,
    addresses: list[str],
    *,
    ready: bool | None = True,
    port_name: str = "http",
) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "labels": {SERVICE_LABEL: service}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": conditions, "nodeName": "node-1"}
            for address in addresses
        ],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


class FakeKubernetes:
    def __init__(self, tokens: set[str]) -> None:
        self.tokens = tokens
        self.version = 100
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> slice
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, type, ns, slice
        self.oldest = self.version  # versions before this are compacted away
        self.requests: list[dict[str, str]] = []
        self._changed = trio.Event()
        self._end_watches = trio.Event()

    # -- what a test does to the cluster ---------------------------------------------

    def apply(self, namespace: str, item: dict[str, Any]) -> None:
        key = (namespace, item["metadata"]["name"])
        kind = "MODIFIED" if key in self.slices else "ADDED"
        self.slices[key] = self._record(kind, namespace, item)

    def delete(self, namespace: str, name: str) -> None:
        self._record("DELETED", namespace, self.slices.pop((namespace, name)))

    def bookmark(self) -> None:
        """Move the version on without a change to any watched slice (as other objects do)."""
        self.version += 1
        self._record_raw(self.version, "BOOKMARK", "", {})

    def compact(self) -> None:
        """Forget the history: watches from an older version now get 410 Gone."""
        self.version += 1
        self.history.clear()
        self.oldest = self.version

    def end_watches(self) -> None:
        """End every open watch stream, as the server does at timeoutSeconds."""
        self._end_watches.set()
        self._end_watches = trio.Event()
        self._pulse()

    def _record(self, kind: str, namespace: str, item: dict[str, Any]) -> dict[str, Any]:
        """Record a change; the slice as stored, with its new resourceVersion."""
        self.version += 1
        item = json.loads(json.dumps(item))
        item["metadata"]["resourceVersion"] = str(self.version)
        self._record_raw(self.version, kind, namespace, item)
        return item

    def _record_raw(self, version: int, kind: str, namespace: str, item: dict[str, Any]) -> None:
        self.history.append((version, kind, namespace, item))
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- the HTTP API ------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path, query, headers = request_of(scope)
        self.requests.append(query)
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            await _json(send, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if not path.startswith(PREFIX) or not path.endswith("/endpointslices"):
            await _json(send, 404, _status(404, "NotFound", "the server could not find it"))
            return
        namespace = path[len(PREFIX) :].split("/")[0]
        service = query.get("labelSelector", "").removeprefix(f"{SERVICE_LABEL}=")
        if query.get("watch") in ("true", "1"):
            await self._watch(send, namespace, service, query)
            return
        items = [
            item
            for (ns, _), item in sorted(self.slices.items())
            if ns == namespace and item["metadata"]["labels"].get(SERVICE_LABEL) == service
        ]
        await _json(
            send,
            200,
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            },
        )

    async def _watch(self, send: Any, namespace: str, service: str, query: dict[str, str]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        since = int(query.get("resourceVersion") or self.version)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        if since < self.oldest:
            gone = _status(410, "Expired", f"too old resource version: {since} ({self.oldest})")
            await _line(send, {"type": "ERROR", "object": gone})
            await send({"type": "http.response.body", "body": b""})
            return
        ended = self._end_watches
        with trio.move_on_after(float(query.get("timeoutSeconds", "1800"))):
            while not ended.is_set():
                changed = self._changed
                for version, kind, ns, item in self.history:
                    if version <= since:
                        continue
                    since = version
                    if kind == "BOOKMARK":
                        if bookmarks:
                            marker = {
                                "kind": "EndpointSlice",
                                "apiVersion": "discovery.k8s.io/v1",
                                "metadata": {"resourceVersion": str(version)},
                            }
                            await _line(send, {"type": "BOOKMARK", "object": marker})
                    elif (
                        ns == namespace and item["metadata"]["labels"].get(SERVICE_LABEL) == service
                    ):
                        await _line(send, {"type": kind, "object": item})
                await changed.wait()
        await send({"type": "http.response.body", "body": b""})


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def _line(send: Any, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode() + b"\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _json(send: Any, status: int, body: dict[str, Any]) -> None:
    await respond(send, status, json.dumps(body).encode())
