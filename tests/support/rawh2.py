"""A bare h2 server scripted per request, for upstreams that misbehave on cue.

Hypercorn is a well-behaved server; resets mid-body and GOAWAYs at chosen
moments need frames written by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import trio

Script = Callable[[h2.connection.H2Connection, h2.events.RequestReceived], None]


class RawH2Server:
    def __init__(self, script: Script, *, after_body: bool = False) -> None:
        """``after_body``: run the script once the whole request has arrived, not at its head."""
        self.script = script
        self.after_body = after_body
        self.requests = 0
        self.connections = 0
        self.resets_received: list[int] = []
        self.trailers_received: list[list[tuple[bytes, bytes]]] = []
        self.body_received = b""
        # Streams that get body bytes for ever, as fast as flow control allows.
        self.endless: set[int] = set()
        self.bytes_sent = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        try:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests += 1
                        if not self.after_body:
                            self.script(conn, event)
                    elif isinstance(event, h2.events.StreamEnded) and self.after_body:
                        self.script(conn, event)  # type: ignore[arg-type]
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets_received.append(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        self.body_received += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.trailers_received.append(event.headers)
                        respond(conn, event.stream_id)
                self._send_endless(conn)
                await stream.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, h2.exceptions.ProtocolError):
            pass

    def _send_endless(self, conn: h2.connection.H2Connection) -> None:
        for stream_id in list(self.endless):
            try:
                while (size := min(conn.local_flow_control_window(stream_id), 16384)) > 0:
                    conn.send_data(stream_id, b"e" * size)
                    self.bytes_sent += size
            except h2.exceptions.StreamClosedError:
                self.endless.discard(stream_id)


def respond(conn: h2.connection.H2Connection, stream_id: int, body: bytes = b"ok") -> None:
    conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
    conn.send_data(stream_id, body, end_stream=True)
