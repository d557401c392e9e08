"""An ASGI app served by Hypercorn (a real, independent HTTP/2 server) for the tests.

Paths choose the behaviour: ``/echo`` streams the request body back as it
arrives, ``/bytes/N`` sends N bytes of a known pattern, ``/trailers`` ends with
trailers, ``/slow/SECONDS`` answers late, ``/drip/COUNT/SECONDS`` sends COUNT KiB one
every SECONDS, ``/headers`` returns the request
headers as JSON, ``/fail-mid-body`` breaks after part of the body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from tests.support.asgi import answer_lifespan

CHUNK = 65536

# Told each request path as it arrives, so a test can wait for "in flight" without sleeping.
on_request: Callable[[str], None] | None = None


def pattern(size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a misplaced chunk shows."""
    block = bytes(range(251)) * (CHUNK // 251 + 1)
    out = bytearray()
    offset = 0
    while len(out) < size:
        out += block[offset % 251 : offset % 251 + min(CHUNK, size - len(out))]
        offset += 7
    return bytes(out)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path: str = scope["path"]
    if on_request is not None:
        on_request(path)
    if path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            body = message.get("body", b"")
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": body, "more_body": more})
            if not more:
                return
    await _drain(receive)
    if path.startswith("/bytes/"):
        size = int(path.rsplit("/", 1)[1])
        data = pattern(size)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        for start in range(0, size, CHUNK):
            chunk = data[start : start + CHUNK]
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": start + CHUNK < size}
            )
        if size == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"body before trailers", "more_body": False}
        )
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", b"abc123")],
                "more_trailers": False,
            }
        )
    elif path.startswith("/slow/"):
        await trio.sleep(float(path.rsplit("/", 1)[1]))
        await _reply(send, 200, b"slow answer")
    elif path.startswith("/drip/"):
        _, _, count, interval = path.split("/")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(int(count)):
            await trio.sleep(float(interval))
            await send(
                {
                    "type": "http.response.body",
                    "body": b"d" * 1024,
                    "more_body": index + 1 < int(count),
                }
            )
    elif path == "/headers":
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await _reply(send, 200, json.dumps(headers).encode())
    elif path == "/fail-mid-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        raise RuntimeError("the upstream breaks mid-body on purpose")
    else:
        await _reply(send, 200, b"hello from the test upstream")


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
