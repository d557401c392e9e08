"""What every ASGI app of the tests shares: Hypercorn's lifespan protocol."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Acknowledge startup, then shutdown (Hypercorn waits for both)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def request_of(scope: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, str]]:
    """An HTTP scope's path, query (last value of each name) and headers (lowercase names)."""
    query = {name: values[-1] for name, values in parse_qs(scope["query_string"].decode()).items()}
    headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
    return scope["path"], query, headers


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON response."""
    start = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
