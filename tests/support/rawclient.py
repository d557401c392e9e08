"""A bare h2 client over a trio socket, for what curl will not do on cue."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from meshnode.policy.units import Address


class RawH2Client:
    def __init__(self, stream: trio.SocketStream, conn: h2.connection.H2Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.events: list[h2.events.Event] = []

    @classmethod
    async def connect(cls, address: Address, *, window: int | None = None) -> RawH2Client:
        stream = await trio.open_tcp_stream(address.host, address.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        if window is not None:
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        client = cls(stream, conn)
        await client.flush()
        return client

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    async def request(self, authority: str, path: str, *, end_stream: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET" if end_stream else "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", authority),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        await self.flush()
        return stream_id

    async def receive(self) -> list[h2.events.Event]:
        """One read's worth of events (empty once the server closed the connection)."""
        data = await self.stream.receive_some(65536)
        if not data:
            return []
        events = self.conn.receive_data(data)
        self.events.extend(events)
        await self.flush()
        return events

    async def receive_until(self, kind: type, stream_id: int | None = None) -> h2.events.Event:
        while True:
            for event in await self.receive() or [None]:
                if event is None:
                    raise ConnectionError("the server closed the connection")
                if isinstance(event, kind) and (
                    stream_id is None or getattr(event, "stream_id", None) == stream_id
                ):
                    return event

    async def aclose(self) -> None:
        await self.stream.aclose()
