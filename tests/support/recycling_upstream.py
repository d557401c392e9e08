"""Hypercorn in its own process, recycling its HTTP/2 connections as in production.

Run as ``python -m tests.support.recycling_upstream --max-requests 50``: it prints
``listening 127.0.0.1:PORT`` once it serves. Its h2 is the installed library, apart
from meshnode's codec, and Hypercorn ends a
connection with GOAWAY after ``--max-requests`` requests, as its default of 1,000 does.

It counts what its application processed, so that a test can tell a request that was
sent again from one that ran twice: every request whose body arrived whole is counted by
method, and ``GET /_counts`` answers the counts as JSON (that request is not counted).
``/digest`` answers the SHA-256 of the request body, ``/te`` answers with a ``te:
trailers`` field (a request's field alone), a JSON POST answers 201 with its object and an
``id`` (a service that creates things, as the seed's examples call), ``/headers`` answers
the request's header fields as a JSON object, ``/status/N`` answers status N (``/status/N/MS``
after MS milliseconds), and
``/flaky/KEY`` answers 503 the first time a KEY is asked for and 200 after, ``/work/MS``
takes MS milliseconds on one of ``--capacity`` workers (the rest queue; ``/_capacity/N``
changes how many); anything else
``ok``. With ``--delay MS`` every answer but ``/_counts`` comes MS milliseconds late, and a
request the caller cancels meanwhile (RST_STREAM) is counted as ``cancelled``, not answered.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import signal
from collections import Counter
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.asgi import answer_lifespan

counts: Counter[str] = Counter()


flaky_seen: set[str] = set()
workers = [trio.Semaphore(1_000_000)]  # /work/'s: --capacity of them, the rest queue
late_by = [0.0]  # --delay, in seconds


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    received = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the connection went before the body was whole: not processed
        received += message.get("body", b"")
        if not message.get("more_body"):
            break
    status = 200
    path: str = scope["path"]
    if late_by[0] and path != "/_counts":
        with trio.move_on_after(late_by[0]):
            if (await receive())["type"] == "http.disconnect":  # the caller cancelled
                counts["cancelled"] += 1
                return
    if path == "/_counts":
        body = json.dumps(counts).encode()
    elif path == "/headers":
        fields = {name.decode(): value.decode() for name, value in scope["headers"]}
        body = json.dumps(fields).encode()
    elif path.startswith("/status/"):  # /status/N, or /status/N/MS: N after MS milliseconds
        asked = path.split("/")[2:]
        if len(asked) > 1:
            await trio.sleep(int(asked[1]) / 1000)
        status, body = int(asked[0]), b"as asked"
    elif path.startswith("/work/"):  # /work/MS: MS milliseconds on one of --capacity workers
        async with workers[0]:
            await trio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
        body = b"worked"
    elif path.startswith("/_capacity/"):  # more (or fewer) workers from now on
        workers[0] = trio.Semaphore(int(path.rsplit("/", 1)[1]))
        body = b"ok"
    elif path.startswith("/flaky/"):
        status = 200 if path in flaky_seen else 503
        flaky_seen.add(path)
        body = b"ok" if status == 200 else b"not yet"
    else:
        counts[scope["method"]] += 1
        body = (
            hashlib.sha256(received).hexdigest().encode() if scope["path"] == "/digest" else b"ok"
        )
        if scope["method"] == "POST" and (b"content-type", b"application/json") in scope["headers"]:
            status, body = 201, json.dumps({**json.loads(received), "id": counts["POST"]}).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if status == 201:
        headers.append((b"content-type", b"application/json"))
    if scope["path"] == "/te":
        headers.append((b"te", b"trailers"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main(host: str, port: int, max_requests: int, capacity: int, delay: int) -> None:
    workers[0] = trio.Semaphore(capacity)
    late_by[0] = delay / 1000
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.loglevel = "warning"
    config.keep_alive_max_requests = max_requests
    config.graceful_timeout = 5
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(serve, app, config, shutdown_trigger=_terminated)
        )
        print("listening", binds[0].split("://", 1)[1], flush=True)


async def _terminated() -> None:
    """SIGTERM: Hypercorn's graceful shutdown (GOAWAY, then what is in flight finishes)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            return


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-requests", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=1_000_000, help="/work/'s workers")
    parser.add_argument("--delay", type=int, default=0, help="milliseconds every answer waits")
    options = parser.parse_args()
    trio.run(
        main, options.host, options.port, options.max_requests, options.capacity, options.delay
    )
