"""The seed's ``user-service`` as a real HTTP/2 server (Hypercorn), one instance per object,
that can fail on cue, be killed mid-test, stream large bodies and notice a reset."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import trio

from tests.conftest import serve_asgi
from tests.support.asgi import answer_lifespan, request_of, respond

CHUNK = 64 * 1024


class UserService:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.fail_next = 0  # answer this many requests 503 (a flaky service)
        self.broken = False  # answer everything 500 (a failing service)
        self.requests = 0
        self.seen: list[dict[str, str]] = []  # each request's headers
        self.connections: set[tuple[str, int]] = set()  # the client ends requests came from
        self.versions: set[str] = set()  # HTTP versions spoken to it
        self.disconnected = trio.Event()  # a /slow request's caller went away
        self._scope = trio.CancelScope()

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve until ``kill``; returns "127.0.0.1:PORT"."""
        address: str = await nursery.start(self._serve)
        return address

    def kill(self) -> None:
        """Stop at once: the port closes, open connections with it."""
        self._scope.cancel()

    async def _serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                task_status.started(await serve_asgi(nursery, self))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path, query, headers = request_of(scope)
        self.connections.add(tuple(scope["client"]))
        self.versions.add(scope["http_version"])
        if path == "/slow":
            self.requests += 1
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        digest, size = hashlib.sha256(), 0
        body = b""
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if size <= CHUNK:
                body += chunk
            if not message.get("more_body"):
                break
        self.requests += 1
        self.seen.append(headers)
        if self.fail_next:
            self.fail_next -= 1
            await respond(send, 503, b'{"error": "flaky"}')
        elif self.broken:
            await respond(send, 500, b'{"error": "broken"}')
        elif path == "/api/users" and scope["method"] == "POST":
            user = {**json.loads(body), "id": self.requests, "instance": self.instance}
            await respond(send, 201, json.dumps(user).encode())
        elif path == "/upload":
            answer = {"size": size, "sha256": digest.hexdigest()}
            await respond(send, 200, json.dumps(answer).encode())
        elif path == "/download":
            trailers = "http.response.trailers" in scope.get("extensions", {})
            await _stream(send, int(query["size"]), trailers=trailers)
        else:
            answer = {"instance": self.instance, "path": path, "query": query}
            await respond(send, 200, json.dumps(answer).encode())


def download_body(size: int) -> bytes:
    """What ``/download?size=N`` sends: a pattern, so a misplaced chunk shows."""
    pattern = bytes(range(251))
    return (pattern * (size // len(pattern) + 1))[:size]


async def _stream(send: Any, size: int, *, trailers: bool) -> None:
    """The body in 64 KiB pieces, then (HTTP/2 only: Hypercorn's HTTP/1.1 has none) a
    checksum trailer."""
    body = download_body(size)
    start = [(b"content-type", b"application/octet-stream")]
    await send(
        {"type": "http.response.start", "status": 200, "headers": start, "trailers": trailers}
    )
    for offset in range(0, size, CHUNK):
        piece = body[offset : offset + CHUNK]
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if not trailers:
        return
    trailer = [(b"x-checksum", hashlib.sha256(body).hexdigest().encode())]
    await send({"type": "http.response.trailers", "headers": trailer, "more_trailers": False})
