"""A strict HTTP/2 server in its own process: the installed h2, unpatched, with every
check it has on (its defaults), to judge what meshnode forwards.

Run as ``python -m tests.support.strict_upstream``: it prints ``listening
127.0.0.1:PORT`` once it serves. Every request h2 accepts is answered ``200`` with
``x-strict: accepted``. A request h2 refuses is counted: as a connection error (h2
raised, and the connection ends with its GOAWAY, as any strict server would end it) or a
stream error (h2 reset the stream itself). ``GET /_counts`` answers the counts as JSON,
with the reasons of the last refusals, and is not counted itself.

It imports nothing of meshnode's: its judge is h2, an implementation apart from meshnode's.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

counts: Counter[str] = Counter()
refusals: list[str] = []  # why each refused request was refused


async def serve_connection(stream: trio.SocketStream) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    async with stream:
        while data := await stream.receive_some(65536):
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                counts["connection_errors"] += 1
                refusals.append(f"connection error: {exc}")
                await stream.send_all(conn.data_to_send())  # h2's GOAWAY
                return
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    answer(conn, event)
                elif isinstance(event, h2.events.StreamReset) and not event.remote_reset:
                    counts["stream_errors"] += 1
                    refusals.append(f"stream error on stream {event.stream_id}")
            await stream.send_all(conn.data_to_send())


def answer(conn: h2.connection.H2Connection, request: h2.events.RequestReceived) -> None:
    headers = dict(request.headers or [])
    if headers.get(b":path") == b"/_counts":
        body = json.dumps({**counts, "refusals": refusals[-5:]}).encode()
    else:
        counts["accepted"] += 1
        body = b"ok"
    conn.send_headers(
        request.stream_id,
        [(":status", "200"), ("x-strict", "accepted"), ("content-length", str(len(body)))],
    )
    conn.send_data(request.stream_id, body, end_stream=True)


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print("listening", f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(serve_connection, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    trio.run(main, parser.parse_args().port)
