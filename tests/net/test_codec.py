"""meshnode's HTTP/2 codec against h2, the reference: the same conversations, played
through both, must give the same events and the same bytes to send; and on invalid
input, the error RFC 9113 names, as a connection error or a stream error.

The peer in every conversation is h2 as shipped, validating what it sends, so that the
input is valid; the reference is h2 configured as meshnode configured it before the
codec (no header validation, meshnode's HPACK coders and settings).
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.net.h2.codec import (
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    INVALID_LENGTH,
    REFUSED_STREAM,
    STREAM_CLOSED,
    Codec,
    ProtocolViolation,
    StreamUnusable,
    _content_length,
)
from meshnode.net.h2.framing import (
    CLIENT_PREFACE,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    PROTOCOL_ERROR,
    frame_bytes,
)
from meshnode.net.h2.hpack_decoder import HeaderDecoder
from meshnode.net.h2.hpack_encoder import StaticTableEncoder

LIMITS = {
    "max_concurrent_streams": 8,
    "initial_window_size": 1 << 20,
    "max_header_list_size": 16384,
    "max_frame_size": 16384,
}
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
POST = [(b":method", b"POST"), *REQUEST[1:], (b"content-type", b"application/grpc")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]
TRAILERS = [(b"grpc-status", b"0")]


def codec(client_side: bool) -> Codec:
    return Codec(client_side=client_side, enable_connect_protocol=not client_side, **LIMITS)


def reference(client_side: bool) -> h2.connection.H2Connection:
    """h2 as meshnode's sessions configured it before the codec."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    codes = h2.settings.SettingCodes
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            codes.MAX_CONCURRENT_STREAMS: LIMITS["max_concurrent_streams"],
            codes.INITIAL_WINDOW_SIZE: LIMITS["initial_window_size"],
            codes.MAX_HEADER_LIST_SIZE: LIMITS["max_header_list_size"],
            codes.MAX_FRAME_SIZE: LIMITS["max_frame_size"],
            codes.ENABLE_PUSH: 0,
            codes.ENABLE_CONNECT_PROTOCOL: 0 if client_side else 1,
        },
    )
    conn.encoder = StaticTableEncoder()
    conn.decoder = HeaderDecoder()
    conn.decoder.max_header_list_size = LIMITS["max_header_list_size"]
    return conn


def peer(client_side: bool) -> h2.connection.H2Connection:
    """h2 as shipped, validating what it sends."""
    return h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )


_DEFAULTS = {0x1: 4096, 0x2: 1, 0x3: None, 0x4: 65535, 0x5: 16384, 0x6: None, 0x8: 0}


def frames(data: bytes) -> list[tuple[Any, ...]]:
    """The frames in ``data``, a SETTINGS frame's entries as a mapping without the values
    RFC 9113 gives by default (h2 writes some of those, the codec does not)."""
    if data.startswith(CLIENT_PREFACE):
        data = data[len(CLIENT_PREFACE) :]
    out: list[tuple[Any, ...]] = []
    position = 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 3], "big")
        kind, flags = data[position + 3], data[position + 4]
        stream_id = int.from_bytes(data[position + 5 : position + 9], "big")
        payload = data[position + 9 : position + 9 + length]
        if kind == 0x4:
            entries = {
                int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(
                    payload[i + 2 : i + 6], "big"
                )
                for i in range(0, len(payload), 6)
            }
            out.append(
                (
                    kind,
                    flags,
                    stream_id,
                    {k: v for k, v in entries.items() if _DEFAULTS.get(k) != v},
                )
            )
        else:
            out.append((kind, flags, stream_id, payload))
        position += 9 + length
    return out


def seen(events: list[Any]) -> list[tuple[Any, ...]]:
    """The events a session acts on, in one form for both."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        name = type(event).__name__
        if name in ("RequestReceived", "ResponseReceived", "TrailersReceived"):
            out.append((name, event.stream_id, [tuple(field) for field in event.headers]))
        elif name == "DataReceived":
            out.append((name, event.stream_id, bytes(event.data), event.flow_controlled_length))
        elif name in ("StreamEnded", "WindowUpdated"):
            out.append((name, event.stream_id))
        elif name == "StreamReset":
            out.append((name, event.stream_id, int(event.error_code), event.remote_reset))
        elif name in ("RemoteSettingsChanged", "SettingsAcknowledged"):
            out.append((name,))
    return out


class Pair:
    """The codec and the reference on one side of a connection, and one peer: whatever the
    peer sends reaches both, whatever this side does is done by both, and each time both
    must see and send the same."""

    def __init__(self, client_side: bool) -> None:
        self.ours, self.theirs, self.peer = (
            codec(client_side),
            reference(client_side),
            peer(not client_side),
        )
        self.ours.initiate_connection()
        self.theirs.initiate_connection()
        self.ours.increment_flow_control_window(1 << 20)
        self.theirs.increment_flow_control_window(1 << 20)
        self.peer.initiate_connection()
        self.flush()
        self.deliver()
        self.flush()
        self.deliver()

    def deliver(self) -> list[tuple[Any, ...]]:
        """What the peer queued, received by both; the events they agree on."""
        data = self.peer.data_to_send()
        if not data:
            return []
        ours = seen(self.ours.receive_data(data))
        theirs = seen(self.theirs.receive_data(data))
        assert ours == theirs
        return ours

    def flush(self) -> None:
        """What both queued, identical, received by the peer."""
        ours, theirs = self.ours.data_to_send(), self.theirs.data_to_send()
        assert frames(ours) == frames(theirs)
        self.peer.receive_data(ours)

    def act(self, action: str, *args: Any, **kwargs: Any) -> bool:
        """This side's ``action`` on both, when the reference takes it (input stays valid):
        the codec must take it too, and send the same."""
        try:
            getattr(self.theirs, action)(*args, **kwargs)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.theirs.data_to_send()
            return False
        getattr(self.ours, action)(*args, **kwargs)
        self.flush()
        return True


def test_a_request_and_its_answer_are_seen_and_sent_as_h2_does() -> None:
    pair = Pair(client_side=False)
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    assert pair.deliver() == [
        ("RequestReceived", 1, REQUEST),
        ("StreamEnded", 1),
    ]
    pair.act("send_headers", 1, RESPONSE, end_stream=False)
    pair.act("send_data", 1, b"k" * 1024, end_stream=True)
    assert 1 not in pair.ours.streams  # both ends done: forgotten


def test_a_body_in_frames_and_its_window_updates_are_h2_s() -> None:
    pair = Pair(client_side=False)
    pair.peer.send_headers(1, POST, end_stream=False)
    pair.deliver()
    for _ in range(40):
        pair.peer.send_data(1, b"x" * 16000)
        (_, stream_id, _data, length), *_ = pair.deliver()
        pair.act("acknowledge_received_data", length, stream_id)
    pair.peer.send_data(1, b"x" * 10, pad_length=20)
    pair.peer.send_headers(1, TRAILERS, end_stream=True)
    assert pair.deliver() == [
        ("DataReceived", 1, b"x" * 10, 31),
        ("TrailersReceived", 1, TRAILERS),
        ("StreamEnded", 1),
    ]


def test_an_answer_to_a_client_with_informational_and_trailers() -> None:
    pair = Pair(client_side=True)
    pair.act("send_headers", 1, POST, end_stream=False)
    pair.act("send_data", 1, b"request", end_stream=True)
    pair.deliver()
    pair.peer.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
    pair.peer.send_headers(1, [(b":status", b"200"), (b"content-length", b"5")])
    pair.peer.send_data(1, b"hello")
    pair.peer.send_headers(1, TRAILERS, end_stream=True)
    assert pair.deliver() == [
        ("ResponseReceived", 1, [(b":status", b"200"), (b"content-length", b"5")]),
        ("DataReceived", 1, b"hello", 5),
        ("TrailersReceived", 1, TRAILERS),
        ("StreamEnded", 1),
    ]


def test_a_head_request_s_answer_has_no_body_whatever_its_length() -> None:
    pair = Pair(client_side=True)
    pair.act("send_headers", 1, [(b":method", b"HEAD"), *REQUEST[1:]], end_stream=True)
    pair.peer.send_headers(1, [(b":status", b"200"), (b"content-length", b"99")], end_stream=True)
    assert pair.deliver()[-1] == ("StreamEnded", 1)


def test_cookie_crumbs_arrive_joined_as_h2_joins_them() -> None:
    pair = Pair(client_side=False)
    crumbs = [*REQUEST, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")]
    pair.peer.send_headers(1, crumbs, end_stream=True)
    (_, _, headers), _ = pair.deliver()
    assert headers == [*REQUEST, (b"accept", b"*/*"), (b"cookie", b"a=1; b=2")]


def test_a_big_header_block_goes_in_continuation_frames_both_ways() -> None:
    pair = Pair(client_side=False)
    big = [*REQUEST, *((b"x-field-%d" % i, b"v" * 200) for i in range(60))]
    pair.peer.send_headers(1, big, end_stream=True)
    assert pair.deliver()[0] == ("RequestReceived", 1, big)
    pair.act("send_headers", 1, [(b":status", b"200"), *big[4:]], end_stream=True)


def test_the_peer_s_settings_resize_windows_and_frames_as_h2_does() -> None:
    pair = Pair(client_side=True)
    pair.act("send_headers", 1, POST, end_stream=False)
    pair.peer.update_settings(
        {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 20000,
        }
    )
    pair.deliver()
    pair.flush()
    pair.deliver()
    assert pair.ours.local_flow_control_window(1) == pair.theirs.local_flow_control_window(1)
    assert pair.ours.max_outbound_frame_size == pair.theirs.max_outbound_frame_size == 20000
    pair.act("send_data", 1, b"y" * 1000, end_stream=False)
    assert pair.ours.local_flow_control_window(1) == 0
    pair.peer.increment_flow_control_window(500, stream_id=1)
    assert pair.deliver() == [("WindowUpdated", 1)]
    assert pair.ours.local_flow_control_window(1) == pair.theirs.local_flow_control_window(1)


def test_no_data_goes_while_the_peer_has_a_window_below_zero() -> None:
    """RFC 9113 6.9.2: a smaller SETTINGS_INITIAL_WINDOW_SIZE can leave a stream's window
    negative, and no DATA may go until a WINDOW_UPDATE brings it back, not even an empty
    frame ending the body (h2 as a receiver refuses one as a flow-control error)."""
    pair = Pair(client_side=True)
    pair.act("send_headers", 1, POST, end_stream=False)
    pair.act("send_data", 1, b"z" * 100, end_stream=False)
    pair.peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.deliver()
    pair.flush()
    assert pair.ours.local_flow_control_window(1) == -90
    with pytest.raises(StreamUnusable):
        pair.ours.send_data(1, b"", end_stream=True)
    pair.peer.increment_flow_control_window(90, stream_id=1)
    pair.deliver()
    assert pair.act("send_data", 1, b"", end_stream=True)


def test_resets_both_ways_and_frames_that_cross_them() -> None:
    pair = Pair(client_side=False)
    pair.peer.send_headers(1, POST, end_stream=False)
    pair.peer.send_headers(3, POST, end_stream=False)
    pair.deliver()
    pair.peer.reset_stream(1, 8)
    assert pair.deliver() == [("StreamReset", 1, 8, True)]
    pair.ours.reset_stream(3, 8)
    pair.peer.send_data(3, b"late")  # sent before the peer saw the reset: ignored
    pair.ours.data_to_send()
    assert pair.ours.receive_data(pair.peer.data_to_send()) == []
    assert pair.ours.take_provoked_resets() == []


def test_pings_are_answered_as_h2_answers_them() -> None:
    pair = Pair(client_side=False)
    pair.peer.ping(b"12345678")
    pair.deliver()
    pair.flush()


def _steps(*names: str) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    """Conversations: a step's name, which live stream it takes, and a size or a code."""
    return st.lists(
        st.tuples(st.sampled_from(names), st.integers(0, 7), st.integers(0, 40000)), max_size=40
    )


CONVERSATIONS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class Conversation:
    """One stream as a conversation test sees it: who may still send, and what this side
    has received and not yet acknowledged. The tests keep each stream's state themselves
    and take only the steps valid in it: h2 closes a stream on a step it refuses, and its
    encoder keeps a header block it refused, so a refused step would make the peer itself
    invalid."""

    def __init__(self, *, peer_sending: bool, ours_sending: bool) -> None:
        self.peer_sending = peer_sending
        self.ours_sending = ours_sending
        self.answered = False
        self.reset = False
        self.received = 0

    @property
    def alive(self) -> bool:
        return not self.reset and (self.peer_sending or self.ours_sending)


def _connection_step(pair: Pair, action: str, size: int) -> bool:
    """A step of the peer's on the connection (a ping, new settings), if ``action`` is one."""
    if action == "ping":
        pair.peer.ping(size.to_bytes(8, "big"))
    elif action == "settings":
        pair.peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})
    else:
        return False
    pair.deliver()
    pair.flush()
    return True


def _stream_step(
    pair: Pair, streams: dict[int, Conversation], action: str, pick: int, size: int
) -> tuple[int, Conversation] | None:
    """The live stream a step on a stream takes; None when the step was the connection's
    (a ping, settings, taken here) or no stream is live."""
    if _connection_step(pair, action, size):
        return None
    live = sorted(stream_id for stream_id, state in streams.items() if state.alive)
    if not live:
        return None
    chosen = live[pick % len(live)]
    return chosen, streams[chosen]


def _our_step(pair: Pair, action: str, stream_id: int, state: Conversation) -> None:
    """This side's reset or acknowledgement, the same steps on either side."""
    if action == "reset":
        pair.act("reset_stream", stream_id, 8)
        state.reset = True
    elif action == "ack" and state.received:
        pair.act("acknowledge_received_data", state.received, stream_id)
        state.received = 0


def _settle(pair: Pair, streams: dict[int, Conversation]) -> None:
    """What the peer sent, delivered (its DATA counted, to acknowledge), and the replies."""
    for event in pair.deliver():
        if event[0] == "DataReceived":
            streams[event[1]].received += event[3]
    pair.flush()


@CONVERSATIONS
@given(
    _steps(
        "open",
        "open-ended",
        "data",
        "data-end",
        "trailers",
        "peer-reset",
        "ping",
        "settings",
        "answer",
        "answer-data",
        "answer-end",
        "reset",
        "ack",
    )
)
def test_any_valid_conversation_is_seen_and_answered_as_h2_does(actions) -> None:
    """A server side taking requests, bodies, trailers, resets, pings and settings from a
    valid peer in any order, and answering, resetting and acknowledging in any order."""
    pair = Pair(client_side=False)
    client = pair.peer
    streams: dict[int, Conversation] = {}
    for action, pick, size in actions:
        if action in ("open", "open-ended"):
            if len(pair.ours.streams) >= LIMITS["max_concurrent_streams"] - 2:
                continue  # over the limit: refused streams have tests of their own
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, POST, end_stream=action == "open-ended")
            streams[stream_id] = Conversation(peer_sending=action == "open", ours_sending=True)
            pair.deliver()
            continue
        step = _stream_step(pair, streams, action, pick, size)
        if step is None:
            continue
        chosen, state = step
        if action in ("data", "data-end") and state.peer_sending:
            window = client.local_flow_control_window(chosen)
            body = b"d" * min(size, window, client.max_outbound_frame_size)
            client.send_data(chosen, body, end_stream=action == "data-end")
            state.peer_sending = action == "data"
        elif action == "trailers" and state.peer_sending:
            client.send_headers(chosen, TRAILERS, end_stream=True)
            state.peer_sending = False
        elif action == "peer-reset":
            client.reset_stream(chosen, size % 14)
            state.reset = True
        elif action == "answer" and state.ours_sending and not state.answered:
            pair.act("send_headers", chosen, RESPONSE, end_stream=False)
            state.answered = True
        elif action in ("answer-data", "answer-end") and state.ours_sending and state.answered:
            window = pair.ours.local_flow_control_window(chosen)
            if window >= 0:  # below zero, no DATA at all (RFC 9113 6.9.2)
                body = b"a" * min(size, window, pair.ours.max_outbound_frame_size)
                pair.act("send_data", chosen, body, end_stream=action == "answer-end")
                state.ours_sending = action == "answer-data"
        else:
            _our_step(pair, action, chosen, state)
        _settle(pair, streams)


@CONVERSATIONS
@given(
    _steps(
        "request",
        "request-ended",
        "body",
        "body-end",
        "trailers",
        "reset",
        "ack",
        "informational",
        "answer",
        "answer-data",
        "answer-end",
        "answer-trailers",
        "peer-reset",
        "ping",
        "settings",
    )
)
def test_any_valid_exchange_as_a_client_is_seen_and_sent_as_h2_does(actions) -> None:
    """The upstream side: requests, bodies and trailers sent in any order, and a valid
    server's informational and final answers, bodies, trailers, resets, pings and
    settings, as a connection to an upstream sees them."""
    pair = Pair(client_side=True)
    server = pair.peer
    streams: dict[int, Conversation] = {}
    for action, pick, size in actions:
        if action in ("request", "request-ended"):
            stream_id = pair.ours.get_next_available_stream_id()
            if len(pair.ours.streams) >= 6 or not pair.act(
                "send_headers", stream_id, POST, end_stream=action == "request-ended"
            ):
                continue
            streams[stream_id] = Conversation(peer_sending=True, ours_sending=action == "request")
            continue
        step = _stream_step(pair, streams, action, pick, size)
        if step is None:
            continue
        chosen, state = step
        if action in ("body", "body-end") and state.ours_sending:
            window = pair.ours.local_flow_control_window(chosen)
            if window >= 0:  # below zero, no DATA at all (RFC 9113 6.9.2)
                body = b"b" * min(size, window, pair.ours.max_outbound_frame_size)
                pair.act("send_data", chosen, body, end_stream=action == "body-end")
                state.ours_sending = action == "body"
        elif action == "trailers" and state.ours_sending:
            pair.act("send_headers", chosen, TRAILERS, end_stream=True)
            state.ours_sending = False
        elif action == "informational" and state.peer_sending and not state.answered:
            server.send_headers(chosen, [(b":status", b"100")])
        elif action == "answer" and state.peer_sending and not state.answered:
            server.send_headers(chosen, RESPONSE)
            state.answered = True
        elif action in ("answer-data", "answer-end") and state.peer_sending and state.answered:
            window = server.local_flow_control_window(chosen)
            body = b"r" * min(size, window, server.max_outbound_frame_size)
            server.send_data(chosen, body, end_stream=action == "answer-end")
            state.peer_sending = action == "answer-data"
        elif action == "answer-trailers" and state.peer_sending and state.answered:
            server.send_headers(chosen, TRAILERS, end_stream=True)
            state.peer_sending = False
        elif action == "peer-reset":
            server.reset_stream(chosen, size % 14)
            state.reset = True
        else:
            _our_step(pair, action, chosen, state)
        _settle(pair, streams)


# -- invalid input: what RFC 9113 names ------------------------------------------------


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return frame_bytes(kind, flags, stream_id, payload)


def _server() -> tuple[Codec, h2.connection.H2Connection]:
    pair = Pair(client_side=False)
    return pair.ours, pair.peer


def _request_block(client: h2.connection.H2Connection) -> bytes:
    """A request's header block, as the peer's encoder writes it."""
    return client.encoder.encode(REQUEST)


CONNECTION_ERRORS = [
    ("DATA on stream 0", _frame(0x0, 0x1, 0, b"x"), PROTOCOL_ERROR),
    ("DATA on an idle stream", _frame(0x0, 0x1, 9, b"x"), PROTOCOL_ERROR),
    ("HEADERS on an even stream", None, PROTOCOL_ERROR),
    ("padding past the frame", _frame(0x0, 0x8, 1, b"\x05ab"), PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 0 on the connection", _frame(0x8, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 3 bytes", _frame(0x8, 0, 0, b"\0\0\1"), FRAME_SIZE_ERROR),
    ("connection window past 2^31-1", _frame(0x8, 0, 0, b"\x7f\xff\xff\xff"), FLOW_CONTROL_ERROR),
    ("RST_STREAM on stream 0", _frame(0x3, 0, 0, b"\0\0\0\x08"), PROTOCOL_ERROR),
    ("RST_STREAM on an idle stream", _frame(0x3, 0, 7, b"\0\0\0\x08"), PROTOCOL_ERROR),
    ("SETTINGS on a stream", _frame(0x4, 0, 1), PROTOCOL_ERROR),
    ("SETTINGS ACK with data", _frame(0x4, 0x1, 0, b"\0\x03\0\0\0\x01"), FRAME_SIZE_ERROR),
    ("SETTINGS of 5 bytes", _frame(0x4, 0, 0, b"\0\x03\0\0\0"), FRAME_SIZE_ERROR),
    ("ENABLE_PUSH of 2", _frame(0x4, 0, 0, b"\0\x02\0\0\0\x02"), PROTOCOL_ERROR),
    ("initial window past 2^31-1", _frame(0x4, 0, 0, b"\0\x04\x80\0\0\0"), FLOW_CONTROL_ERROR),
    ("max frame size under 16384", _frame(0x4, 0, 0, b"\0\x05\0\0\x10\0"), PROTOCOL_ERROR),
    ("PING on a stream", _frame(0x6, 0, 1, b"12345678"), PROTOCOL_ERROR),
    ("PING of 7 bytes", _frame(0x6, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    ("PRIORITY on stream 0", _frame(0x2, 0, 0, b"\0\0\0\x01\x10"), PROTOCOL_ERROR),
    ("PUSH_PROMISE", _frame(0x5, 0x4, 1, b"\0\0\0\x02"), PROTOCOL_ERROR),
    ("CONTINUATION out of a block", _frame(0x9, 0x4, 1, b"\x82"), PROTOCOL_ERROR),
    (
        "HPACK that does not decode",
        _frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff"),
        COMPRESSION_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("what", "data", "code"), CONNECTION_ERRORS, ids=[case[0] for case in CONNECTION_ERRORS]
)
def test_a_connection_error_names_rfc_9113_s_code(what: str, data: bytes | None, code: int) -> None:
    server, client = _server()
    if data is None:
        data = _frame(0x1, 0x5, 2, _request_block(client))
    with pytest.raises(ProtocolViolation) as raised:
        server.receive_data(data)
    assert raised.value.error_code == code


def test_a_header_block_interrupted_is_a_connection_error() -> None:
    server, client = _server()
    block = _request_block(client)
    data = _frame(0x1, 0x1, 1, block[:2]) + _frame(0x6, 0, 0, b"12345678")
    with pytest.raises(ProtocolViolation) as raised:
        server.receive_data(data)
    assert raised.value.error_code == PROTOCOL_ERROR


def test_an_oversized_header_list_is_enhance_your_calm_as_with_h2() -> None:
    server, client = _server()
    block = client.encoder.encode([*REQUEST, (b"x-big", b"v" * 20000)])
    with pytest.raises(ProtocolViolation) as raised:
        server.receive_data(_frame(0x1, 0x5, 1, block))
    assert raised.value.error_code == ENHANCE_YOUR_CALM


def _stream_error(server: Codec, data: bytes) -> tuple[list[Any], list[tuple[int, int]]]:
    events = seen(server.receive_data(data))
    return events, server.take_provoked_resets()


def test_data_after_the_peer_ended_the_stream_is_stream_closed() -> None:
    server, client = _server()
    server.receive_data(_frame(0x1, 0x5, 1, _request_block(client)))
    events, provoked = _stream_error(server, _frame(0x0, 0x1, 1, b"late"))
    assert provoked == [(1, STREAM_CLOSED)]
    assert events == [("StreamReset", 1, STREAM_CLOSED, False)]
    assert frames(server.data_to_send())[-1] == (0x3, 0, 1, STREAM_CLOSED.to_bytes(4, "big"))


def test_a_body_longer_than_its_content_length_fails_its_stream_alone() -> None:
    server, client = _server()
    block = client.encoder.encode([*POST, (b"content-length", b"3")])
    server.receive_data(_frame(0x1, 0x4, 1, block))
    events, provoked = _stream_error(server, _frame(0x0, 0x1, 1, b"four"))
    assert provoked == [(1, PROTOCOL_ERROR)]
    assert events == [("StreamReset", 1, PROTOCOL_ERROR, False)]
    server.receive_data(_frame(0x6, 0, 0, b"stillok!"))  # the connection lives on


@pytest.mark.parametrize("lengths", [[b"trailers"], [b"3", b"4"], [b"-1"]])
def test_a_content_length_that_is_no_length_fails_its_stream_alone(lengths) -> None:
    server, client = _server()
    fields = [*POST, *((b"content-length", length) for length in lengths)]
    events, provoked = _stream_error(server, _frame(0x1, 0x4, 1, client.encoder.encode(fields)))
    assert (events, provoked) == (
        [("StreamReset", 1, PROTOCOL_ERROR, False)],
        [(1, PROTOCOL_ERROR)],
    )


def test_trailers_that_do_not_end_the_stream_fail_it() -> None:
    server, client = _server()
    server.receive_data(_frame(0x1, 0x4, 1, _request_block(client)))
    _events, provoked = _stream_error(server, _frame(0x1, 0x4, 1, client.encoder.encode(TRAILERS)))
    assert provoked == [(1, PROTOCOL_ERROR)]


def test_a_stream_over_the_limit_is_refused_and_its_block_still_decoded() -> None:
    server, client = _server()
    for stream_id in range(1, 2 * LIMITS["max_concurrent_streams"], 2):
        server.receive_data(_frame(0x1, 0x4, stream_id, client.encoder.encode(POST)))
    over = 2 * LIMITS["max_concurrent_streams"] + 1
    dynamic = [*POST, (b"x-new", b"indexed")]
    events, provoked = _stream_error(server, _frame(0x1, 0x4, over, client.encoder.encode(dynamic)))
    assert provoked == [(over, REFUSED_STREAM)]
    server.receive_data(_frame(0x3, 0, 1, b"\0\0\0\x08"))  # one ends: room for the next
    events = seen(server.receive_data(_frame(0x1, 0x4, over + 2, client.encoder.encode(dynamic))))
    assert events == [("RequestReceived", over + 2, dynamic)]  # the table kept in step


def test_a_stream_window_update_of_zero_or_past_the_limit_fails_the_stream() -> None:
    server, client = _server()
    server.receive_data(_frame(0x1, 0x4, 1, _request_block(client)))
    server.receive_data(_frame(0x1, 0x4, 3, _request_block(client)))
    _, provoked = _stream_error(server, _frame(0x8, 0, 1, b"\0\0\0\0"))
    assert provoked == [(1, PROTOCOL_ERROR)]
    _, provoked = _stream_error(server, _frame(0x8, 0, 3, b"\x7f\xff\xff\xff"))
    assert provoked == [(3, FLOW_CONTROL_ERROR)]


def test_a_stream_depending_on_itself_fails_alone() -> None:
    server, _client = _server()
    _, provoked = _stream_error(server, _frame(0x2, 0, 5, b"\0\0\0\x05\x10"))
    assert provoked == [(5, PROTOCOL_ERROR)]


def test_data_past_a_stream_s_window_is_a_flow_control_error() -> None:
    server, client = _server()
    server.receive_data(_frame(0x1, 0x4, 1, _request_block(client)))
    frame = _frame(0x0, 0, 1, b"z" * 16384)
    with pytest.raises(ProtocolViolation) as raised:
        for _ in range(LIMITS["initial_window_size"] // 16384 + 1):  # the window we set
            server.receive_data(frame)
    assert raised.value.error_code == FLOW_CONTROL_ERROR


def test_a_wrong_preface_is_a_connection_error() -> None:
    server = codec(client_side=False)
    with pytest.raises(ProtocolViolation):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_a_send_on_a_closed_stream_is_refused_not_written() -> None:
    pair = Pair(client_side=False)
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    pair.deliver()
    pair.ours.send_headers(1, RESPONSE, end_stream=True)
    with pytest.raises(StreamUnusable):
        pair.ours.send_data(1, b"more", end_stream=True)
    with pytest.raises(StreamUnusable):
        pair.ours.local_flow_control_window(1)


def _content_length_by_rule(headers: list[tuple[bytes, bytes]]) -> int | None:
    """RFC 9110 8.6 as a loop reads it: every value a number, and all of them the same."""
    length = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                return INVALID_LENGTH
            length = int(value)
    return length


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"content-length", b"content-type", b"x-length"]),
            st.one_of(
                st.sampled_from([b"0", b"3", b"03", b"1024", b"", b"-1", b"3 ", b"\xd9\xa3"]),
                st.binary(max_size=4),
            ),
        ),
        max_size=5,
    )
)
def test_the_declared_length_follows_the_rule_however_many_fields_declare_it(headers) -> None:
    assert _content_length(headers) == _content_length_by_rule(headers)
