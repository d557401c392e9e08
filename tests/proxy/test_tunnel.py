"""Following WebSocket frames without reading them, and the Close frame the node sends."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message

from meshnode.proxy.tunnel import FrameCursor, close_frame


def frames(messages: list[bytes], *, client: bool) -> bytes:
    """What a real WebSocket endpoint (wsproto) puts on the wire for ``messages``."""
    side = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
    return b"".join(side.send(Message(data=message)) for message in messages)


@given(
    st.lists(st.binary(max_size=70_000), min_size=1, max_size=4),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=70_000), max_size=6),
)
def test_the_cursor_is_between_frames_exactly_at_frame_ends(
    messages: list[bytes], client: bool, cuts: list[int]
) -> None:
    wire = frames(messages, client=client)
    ends = set()
    position = 0
    for message in messages:
        position += len(frames([message], client=client))
        ends.add(position)
    cursor = FrameCursor()
    points = sorted({0, len(wire), *(cut % len(wire) for cut in cuts)})
    for start, stop in itertools.pairwise(points):
        cursor.feed(wire[start:stop])
        # A masked frame's mask key differs per call, but never its length: ends line up.
        assert cursor.between_frames == (stop in ends)


def test_close_frames_parse_as_going_away_both_ways() -> None:
    server = Connection(ConnectionType.SERVER)
    server.receive_data(close_frame(1001, "going away", masked=True))  # a client's: masked
    (event,) = list(server.events())
    assert isinstance(event, CloseConnection) and event.code == 1001
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(close_frame(1001, "going away", masked=False))
    (event,) = list(client.events())
    assert isinstance(event, CloseConnection) and event.reason == "going away"


def test_a_frame_cut_short_leaves_the_cursor_inside_it() -> None:
    cursor = FrameCursor()
    wire = frames([b"x" * 1000], client=False)
    cursor.feed(wire[:500])
    assert not cursor.between_frames
    cursor.feed(wire[500:])
    assert cursor.between_frames
