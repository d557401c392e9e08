"""The speedups keep h2's and hyperframe's results: frames, flags, settings, stream counts."""

from __future__ import annotations

import enum
import inspect
import json
import random
import subprocess
import sys
import textwrap

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import hpack
import hyperframe.exceptions
import hyperframe.flags
import hyperframe.frame
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshnode.net.h2 import speedups as h2_speedups
from meshnode.net.h2.hpack_encoder import StaticTableEncoder
from meshnode.net.h2.speedups import (
    ClosedStreams,
    Configuration,
    Connection,
    FrameFlags,
    SettingValues,
    bytes_headers,
    frame_name,
    informational,
    validation_flags,
)
from meshnode.net.tested import untested
from tests.support import pristine_h2

_h2s_validation_flags = h2_speedups._build_validation_flags  # h2's own


def test_h2_builds_no_frame_repr_for_its_trace() -> None:
    source = inspect.getsource(h2.connection)
    assert source.count("repr(") == 1  # the trace of received frames: an h2 upgrade rechecks
    assert h2.connection.repr is frame_name  # type: ignore[attr-defined]
    assert frame_name(hyperframe.frame.DataFrame(1, data=b"x" * 16384)) == "DataFrame"
    assert "<hex:" in repr(hyperframe.frame.DataFrame(1, data=b"x"))  # elsewhere as before


def _state(frame: hyperframe.frame.Frame) -> dict[str, object]:
    state = dict(vars(frame))
    flags = state.pop("flags")
    return state | {"flags": set(flags), "valid": flags._valid_flags}


@pytest.mark.parametrize("frame_class", [hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame])
@given(stream_id=st.integers(min_value=1, max_value=2**31 - 1), data=st.binary(max_size=32))
def test_a_flat_frame_is_the_chained_one(
    frame_class: type[hyperframe.frame.DataFrame], stream_id: int, data: bytes
) -> None:
    flat = frame_class(stream_id, data)
    chained = frame_class(stream_id, data, pad_length=0)  # a keyword: the chain builds it
    assert _state(flat) == _state(chained)
    assert flat.serialize() == chained.serialize()
    parsed, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(flat.serialize()[:9]))
    parsed.parse_body(memoryview(flat.serialize()[9:]))
    assert type(parsed) is frame_class and _state(parsed) == _state(flat) | {"body_len": len(data)}


@pytest.mark.parametrize("frame_class", [hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame])
def test_a_frame_without_a_stream_is_refused_as_before(
    frame_class: type[hyperframe.frame.DataFrame],
) -> None:
    with pytest.raises(hyperframe.exceptions.InvalidDataError, match="Stream ID must be non-zero"):
        frame_class(0)


def test_flags_accept_and_refuse_as_before() -> None:
    frame = hyperframe.frame.HeadersFrame(1, flags=["END_STREAM", "END_HEADERS"])
    assert set(frame.flags) == {"END_STREAM", "END_HEADERS"}
    assert "PADDED" not in frame.flags
    other = hyperframe.frame.DataFrame(3)
    other.flags.add("PADDED")
    with pytest.raises(ValueError, match="Unexpected flag: PRIORITY"):
        other.flags.add("PRIORITY")  # valid for HEADERS, not for DATA
    assert FrameFlags(iter([hyperframe.flags.Flag("ACK", 1)]))._valid_flags == {"ACK"}
    parsed, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(frame.serialize()[:9]))
    assert type(parsed.flags) is FrameFlags and isinstance(parsed.flags, hyperframe.flags.Flags)
    assert parsed.flags == {"END_STREAM", "END_HEADERS"} and len(parsed.flags) == 2
    parsed.flags.discard("END_STREAM")
    assert repr(parsed.flags) == "['END_HEADERS']"
    every_bit = memoryview(b"\x00\x00\x00\x01\xff\x00\x00\x00\x01")  # HEADERS, all flags
    parsed, _ = hyperframe.frame.Frame.parse_frame_header(every_bit)
    assert parsed.flags == {"END_STREAM", "END_HEADERS", "PADDED", "PRIORITY"}  # others ignored


def test_settings_wait_for_their_acknowledgement_as_before() -> None:
    codes = h2.settings.SettingCodes
    settings = h2.settings.Settings(client=True, initial_values={codes.MAX_CONCURRENT_STREAMS: 10})
    settings[codes.MAX_FRAME_SIZE] = 32768
    settings[codes.MAX_HEADER_LIST_SIZE] = 1000  # not there before
    assert settings.max_frame_size == 16384  # until acknowledged
    changed = settings.acknowledge()
    assert settings.max_frame_size == 32768
    assert settings.max_header_list_size == 1000
    assert changed[codes.MAX_FRAME_SIZE].original_value == 16384
    assert settings.max_concurrent_streams == 10
    assert all(type(values) is SettingValues for values in settings._settings.values())


def _client_and_server(max_streams: int) -> tuple[Connection, h2.connection.H2Connection, dict]:
    live: dict[int, object] = {}
    client = Connection(h2.config.H2Configuration(client_side=True, header_encoding=None), live)
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.local_settings = h2.settings.Settings(
        client=False,
        initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams},
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server, live


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def _exchange(client: Connection, server: h2.connection.H2Connection, stream_id: int) -> None:
    """A whole request and answer on ``stream_id``: h2 has closed it on both sides after."""
    client.send_headers(stream_id, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
    client.receive_data(server.data_to_send())


def test_a_client_counts_the_sessions_streams_against_the_peers_limit() -> None:
    client, _, live = _client_and_server(max_streams=2)
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST, end_stream=True)
        live[stream_id] = object()
    with pytest.raises(h2.exceptions.TooManyStreamsError, match="2 open"):
        client.send_headers(5, REQUEST, end_stream=True)
    del live[1]
    client.send_headers(5, REQUEST, end_stream=True)


def _late_frame_outcome(client: Connection, frame: hyperframe.frame.Frame) -> str:
    try:
        events = client.receive_data(frame.serialize())
    except h2.exceptions.ProtocolError as error:
        return type(error).__name__
    return ",".join(type(event).__name__ for event in events) or "ignored"


@pytest.mark.parametrize(
    "late",
    [
        hyperframe.frame.WindowUpdateFrame(1, window_increment=10),
        hyperframe.frame.RstStreamFrame(1),
        hyperframe.frame.DataFrame(1, b"late"),
    ],
    ids=["window-update", "rst-stream", "data"],
)
def test_a_released_stream_is_what_h2_keeps_after_its_own_sweep(
    late: hyperframe.frame.Frame,
) -> None:
    outcomes = []
    for release in (True, False):
        client, server, _ = _client_and_server(max_streams=10)
        _exchange(client, server, 1)
        client.send_headers(3, REQUEST, end_stream=True)
        if release:
            client.release(3)  # still open in h2: kept
            client.release(1)
        else:
            h2.connection.H2Connection.open_outbound_streams.fget(client)  # h2's sweep
        assert list(client.streams) == [3]
        client.data_to_send()
        outcomes.append((_late_frame_outcome(client, late), client.data_to_send()))
    assert outcomes[0] == outcomes[1]


def test_closed_streams_the_session_never_released_are_dropped_in_time() -> None:
    client, server, _ = _client_and_server(max_streams=1000)
    for stream_id in range(1, 400, 2):
        _exchange(client, server, stream_id)
    assert len(client.streams) <= 17


def _late_headers(stream_id: int) -> hyperframe.frame.HeadersFrame:
    return hyperframe.frame.HeadersFrame(stream_id, b"\x88", flags=["END_HEADERS"])  # 200


LAST_ENDED = 3 + 2 * ClosedStreams.ENDED_KEPT  # the stream ids 3 to this one end normally


def _reset_then_many_ended() -> Connection:
    """A client whose stream 1 it reset, and then ``ENDED_KEPT + 1`` streams that ended."""
    client, server, _ = _client_and_server(max_streams=10)
    client.send_headers(1, REQUEST, end_stream=True)
    client.reset_stream(1)
    server.receive_data(client.data_to_send())
    client.release(1)
    for stream_id in range(3, LAST_ENDED + 2, 2):
        _exchange(client, server, stream_id)
        client.release(stream_id)
    client.data_to_send()
    return client


def test_a_reset_stream_is_remembered_after_ended_ones_are_forgotten() -> None:
    client = _reset_then_many_ended()
    assert 3 not in client._closed_streams  # ended long ago: forgotten
    assert LAST_ENDED in client._closed_streams
    # An answer that was in flight when the reset left is ignored, however many streams
    # ended since; h2 would end the connection for it once it forgot the reset. Ignored
    # without a word (RFC 9113 5.1): h2 alone would answer RST_STREAM STREAM_CLOSED, and the
    # session would count the upstream as a peer that provoked it.
    assert _late_frame_outcome(client, _late_headers(1)) == "ignored"
    assert client.data_to_send() == b""
    assert client.take_provoked_resets() == []


@pytest.mark.parametrize(
    ("stream_id", "error", "code"),
    [(LAST_ENDED, "StreamClosedError", 5), (3, "StreamIDTooLowError", 1)],
    ids=["remembered", "forgotten"],
)
def test_a_frame_on_a_stream_that_ended_ends_the_connection_remembered_or_not(
    stream_id: int, error: str, code: int
) -> None:
    client = _reset_then_many_ended()
    with pytest.raises(h2.exceptions.ProtocolError) as raised:
        client.receive_data(_late_headers(stream_id).serialize())
    assert (type(raised.value).__name__, raised.value.error_code) == (error, code)


def test_a_server_counts_its_peers_streams_itself() -> None:
    server = Connection(h2.config.H2Configuration(client_side=False, header_encoding=None), {})
    assert server.open_inbound_streams == 0
    assert server.open_outbound_streams == 0


@given(
    st.lists(
        st.tuples(
            st.one_of(st.binary(max_size=8), st.text(max_size=8)),
            st.one_of(st.binary(max_size=8), st.text(max_size=8)),
        ),
        max_size=6,
    )
)
def test_headers_h2_sends_are_the_bytes_it_would_have_made(fields: list) -> None:
    made = bytes_headers(fields)
    assert made == h2.utilities.utf8_encode_headers(fields)
    assert all(type(name) is bytes and type(value) is bytes for name, value in made)
    never = [h2.utilities.NeverIndexedHeaderTuple(b"authorization", b"secret")]
    assert type(bytes_headers(never)[0]) is h2.utilities.NeverIndexedHeaderTuple
    assert bytes_headers(iter([("a", "b")])) == [(b"a", b"b")]


def test_validation_flags_are_what_h2_builds_for_every_kind_of_header_block() -> None:
    client, server, _ = _client_and_server(max_streams=10)
    seen = []
    for connection in (client, server):
        stream = h2.stream.H2Stream(1, connection.config, 65535, 65535)
        for client_side in (None, True, False):
            stream.state_machine.client = client_side
            for kind in (
                h2.events.RequestReceived,
                h2.events.ResponseReceived,
                h2.events.TrailersReceived,
                h2.events.InformationalResponseReceived,
                h2.events.PushedStreamReceived,
                h2.stream._ResponseSent,
                h2.stream._RequestSent,
                h2.stream._TrailersSent,
                h2.stream._PushedRequestSent,
            ):
                events = [object.__new__(kind)]  # only its kind matters here
                built = validation_flags(stream, events)
                assert built == _h2s_validation_flags(stream, events)
                seen.append(built)
    assert len({*seen}) > 4  # the kinds differ, and are told apart


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b":status", b":path", b"server", b":method"]),
            st.sampled_from([b"100", b"103", b"200", b"1", b"", b"404"]),
        ),
        max_size=4,
    )
)
def test_informational_is_what_h2_decides(fields: list[tuple[bytes, bytes]]) -> None:
    assert informational(fields) == h2.utilities.is_informational_response(fields)
    assert informational(iter(fields)) == h2.utilities.is_informational_response(fields)


def test_h2s_state_machines_find_every_transition_under_identity_hashes() -> None:
    tables = (h2.connection.H2ConnectionStateMachine._transitions, h2.stream._transitions)
    for table in tables:
        for (state, given_input), step in list(table.items()):
            assert table[(state, given_input)] is step  # a key built anew, as h2 builds it
    sending = h2.stream.StreamInputs.SEND_HEADERS
    assert hash(sending) == object.__hash__(sending) != hash(sending.name)
    machine = h2.stream.H2StreamStateMachine(1)
    machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
    assert machine.state is h2.stream.StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(h2.exceptions.ProtocolError):
        machine.process_input(h2.stream.StreamInputs.SEND_DATA)  # refused as before


def test_hash_by_identity_rehashes_a_table_in_place() -> None:
    class Colour(enum.Enum):
        RED = 1
        BLUE = 2

    table = {(Colour.RED, Colour.BLUE): "step"}
    h2_speedups.hash_by_identity((Colour,), (table,))
    assert table[(Colour.RED, Colour.BLUE)] == "step"
    assert hash(Colour.RED) != hash("RED")  # no longer the hash of its name


def test_a_configuration_holds_what_h2s_would_as_plain_attributes() -> None:
    options = {
        "client_side": False,
        "header_encoding": None,
        "validate_outbound_headers": False,
        "normalize_outbound_headers": False,
        "validate_inbound_headers": False,
    }
    ours, theirs = Configuration(**options), h2.config.H2Configuration(**options)
    names = [*options, "split_outbound_cookies", "normalize_inbound_headers"]
    assert [getattr(ours, n) for n in names] == [getattr(theirs, n) for n in names]
    assert set(names) <= set(vars(ours))  # read without a descriptor
    assert ours.logger.debug("Stream ID %d created", 1) == ""  # h2's calls are taken, unused
    with pytest.raises(ValueError, match="client_side must be a bool"):
        Configuration(client_side=1)
    with pytest.raises(ValueError, match="header_encoding cannot be True"):
        Configuration(header_encoding=True)


_FLAGGED = [c for c in hyperframe.frame.FRAMES.values() if c.defined_flags]


@pytest.mark.parametrize("frame_class", _FLAGGED, ids=lambda c: c.__name__)
@given(flag_byte=st.integers(min_value=0, max_value=255))
def test_flag_bytes_parse_and_serialize_as_hyperframe_does(
    frame_class: type[hyperframe.frame.Frame], flag_byte: int
) -> None:
    defined = frame_class.defined_flags
    frame = frame_class(0 if frame_class.stream_association == "no-stream" else 1)
    assert frame.parse_flags(flag_byte) == {name for name, bit in defined if flag_byte & bit}
    if "PADDED" in frame.flags or "PRIORITY" in frame.flags:
        return  # their bodies need fields set first; the flag byte is what is tested
    wire = frame.serialize()
    assert wire[4] == sum(bit for name, bit in defined if name in frame.flags)
    parsed, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[:9]))
    assert (type(parsed), parsed.flags, length) == (frame_class, frame.flags, len(wire) - 9)


def test_h2_sends_the_frames_it_prepares_in_order() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.clear_outbound_data_buffer()
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
    client.send_headers(1, [*request, (b"x-big", b"v" * 20000)])  # over 16 KiB: continued
    wire = client.data_to_send()
    kinds = []
    while wire:
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[:9]))
        kinds.append((type(frame).__name__, length <= 16384))
        wire = wire[9 + length :]
    assert kinds == [("HeadersFrame", True), ("ContinuationFrame", True)]


def test_stream_id_parity_gives_h2s_own_members() -> None:
    enum_class = type(h2.connection.AllowedStreamIDs.ODD)
    parity = h2.connection.AllowedStreamIDs
    assert isinstance(parity, h2_speedups.StreamIdParity)
    for value in (True, False, 1, 0):
        assert parity(value) is enum_class(value)
    assert (parity.EVEN, parity.ODD) == (enum_class.EVEN, enum_class.ODD)


_DEFAULTS = {
    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**32 + 1,
    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: None,
}


@pytest.mark.parametrize("client", [True, False])
def test_settings_read_directly_are_what_the_mapping_gives(client: bool) -> None:
    codes = h2.settings.SettingCodes
    settings = h2.settings.Settings(client=client)
    read = {
        "header_table_size": codes.HEADER_TABLE_SIZE,
        "enable_push": codes.ENABLE_PUSH,
        "initial_window_size": codes.INITIAL_WINDOW_SIZE,
        "max_frame_size": codes.MAX_FRAME_SIZE,
        "max_concurrent_streams": codes.MAX_CONCURRENT_STREAMS,
        "max_header_list_size": codes.MAX_HEADER_LIST_SIZE,
    }

    def through_the_mapping(code: int) -> object:
        return settings.get(code, _DEFAULTS.get(code))

    def check() -> None:
        for name, code in read.items():
            assert getattr(settings, name) == through_the_mapping(code), name

    check()
    settings.initial_window_size = 1000  # sent, not yet acknowledged
    settings.max_concurrent_streams = 7  # not there before: absent until acknowledged
    check()
    assert settings.initial_window_size == 65535 and settings.max_concurrent_streams == 2**32 + 1
    settings.acknowledge()
    check()
    assert settings.initial_window_size == 1000 and settings.max_concurrent_streams == 7


# -- receive_data: the frames it takes itself, against h2's own path ------------------

_HPACK_BLOCKS = {
    "request": REQUEST,
    "response": [(b":status", b"200")],
    "response-sized": [(b":status", b"200"), (b"content-length", b"3")],
    "informational": [(b":status", b"100")],
    "trailers": [(b"grpc-status", b"0")],
}


@st.composite
def _frames(draw: st.DrawFn) -> list[tuple[str, int, int, object]]:
    """Frames a peer might send: (kind, stream id, flag byte, payload), mostly ones
    ``receive_data`` takes, with padding, priority, bad blocks and odd stream ids mixed in."""
    kinds = st.sampled_from(["headers", "data", "rst", "window-update", "continuation"])
    # A head that opens a stream (a server's request) or answers one (a client's response),
    # so that what follows often finds a stream the peer may send on.
    opening = draw(st.sampled_from(["request", "response", None]))
    head = [("headers", draw(st.sampled_from([1, 7])), 0x4, opening)] if opening else []
    return head + draw(
        st.lists(
            st.tuples(
                kinds,
                st.one_of(st.sampled_from([1, 3]), st.sampled_from([0, 2, 5, 7])),
                # END_HEADERS, with or without END_STREAM, most often; then any combination
                # of those, PADDED and PRIORITY
                st.one_of(st.sampled_from([0x4, 0x5, 0x0, 0x1]), st.integers(0, 0x2D)),
                st.one_of(st.sampled_from(sorted(_HPACK_BLOCKS)), st.binary(max_size=24)),
            ),
            max_size=10,
        )
    )


def _wire(frames: list[tuple[str, int, int, object]]) -> bytes:
    encoder = hpack.Encoder()
    wire = b""
    for kind, stream_id, flag_byte, payload in frames:
        if isinstance(payload, bytes):
            body = payload
        elif kind in ("headers", "continuation"):
            body = encoder.encode(_HPACK_BLOCKS[str(payload)])
        else:
            body = b"abc"
        if flag_byte & 0x8 and kind in ("headers", "data"):  # PADDED: a pad length, the padding
            body = bytes([2]) + body + b"\0\0"
        if flag_byte & 0x20 and kind == "headers":  # PRIORITY: dependency and weight
            body = b"\0\0\0\0\x10" + body
        code = {"data": 0, "headers": 1, "rst": 3, "window-update": 8, "continuation": 9}[kind]
        flags = flag_byte
        if kind in ("rst", "window-update"):
            body, flags = b"\0\0\0\x01", 0
        wire += len(body).to_bytes(3, "big") + bytes([code, flags])
        wire += stream_id.to_bytes(4, "big") + body
    return wire


def _described(outcome: list[h2.events.Event] | Exception) -> object:
    if isinstance(outcome, Exception):
        return type(outcome).__name__, getattr(outcome, "error_code", None)
    return [
        (type(event).__name__, {k: repr(v) for k, v in vars(event).items()}) for event in outcome
    ]


def _handshake(ours: Connection) -> h2.connection.H2Connection:
    """``ours`` past the preface and both sides' SETTINGS, with h2 as the peer."""
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=not ours.config.client_side, header_encoding=None)
    )
    ours.initiate_connection()
    peer.initiate_connection()
    ours.receive_data(peer.data_to_send())
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    return peer


def _twins(client_side: bool) -> list[Connection]:
    """Two connections in the same state: a client with requests open on streams 1, 3 and
    5, or a server past its peer's preface that allows two streams at a time."""
    twins = []
    for _ in range(2):
        ours = Connection(Configuration(client_side=client_side, header_encoding=None), {})
        if not client_side:
            ours.local_settings = h2.settings.Settings(
                client=False,
                initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2},
            )
        _handshake(ours)
        if client_side:
            for stream_id in (1, 3, 5):
                ours.send_headers(stream_id, REQUEST, end_stream=stream_id != 3)
        ours.data_to_send()
        twins.append(ours)
    return twins


_RESET_THEN_NEXT = [
    ("headers", 1, 0x4, "request"),
    ("rst", 1, 0, b""),
    ("headers", 7, 0x5, "request"),
]


@pytest.mark.parametrize("client_side", [True, False], ids=["client", "server"])
@settings(max_examples=400)
@given(frames=_frames(), cut=st.integers(min_value=0, max_value=200), at_frame=st.booleans())
# One stream more than the server allows; a head on a stream the peer reset, after h2 let go
# of it (a stream error: RST_STREAM), and on one below the last opened (a connection error),
# each in a read of its own.
@example(frames=[("headers", i, 0x4, "request") for i in (1, 3, 5)], cut=0, at_frame=True)
@example(frames=[*_RESET_THEN_NEXT, ("headers", 1, 0x5, "request")], cut=3, at_frame=True)
@example(frames=[*_RESET_THEN_NEXT, ("headers", 5, 0x5, "request")], cut=3, at_frame=True)
def test_frames_taken_without_hyperframe_give_what_h2s_path_gives(
    client_side: bool, frames: list[tuple[str, int, int, object]], cut: int, at_frame: bool
) -> None:
    """The same bytes, in the same two reads, to a connection receiving as meshnode's do
    and to one receiving through h2 alone: the same events or error, the same frames to send
    (a GOAWAY, RST_STREAM, WINDOW_UPDATE), the same streams in the same states and the same
    flow control windows."""
    fast, plain = _twins(client_side)
    wire = _wire(frames)
    if at_frame:  # two reads of whole frames, as a read most often is; else cut anywhere
        cut = len(_wire(frames[: cut % (len(frames) + 1)]))
    results = []
    for connection, receive in (
        (fast, fast.receive_data),
        (plain, lambda data: h2.connection.H2Connection.receive_data(plain, data)),
    ):
        outcomes: list[object] = []
        for chunk in (wire[:cut], wire[cut:]):
            try:
                outcomes.append(_described(receive(chunk)))
            except h2.exceptions.ProtocolError as error:
                outcomes.append(_described(error))
                break
        streams = {
            i: (s.state_machine.state, s.inbound_flow_control_window, s._actual_content_length)
            for i, s in connection.streams.items()
        }
        window = connection.inbound_flow_control_window
        state = (connection.state_machine.state, connection.highest_inbound_stream_id, window)
        results.append((outcomes, connection.data_to_send(), streams, state))
    assert results[0] == results[1]


# -- send_headers and send_data: frames written as bytes, against h2's own path ---------

_SENT_BLOCKS = {
    **_HPACK_BLOCKS,
    "big": [(b":status", b"200"), (b"x-big", b"v" * 40000)],  # HEADERS, 2 CONTINUATION
}


def _sender_twins(client_side: bool) -> list[Connection]:
    """Two connections in the same state, configured as meshnode's sessions are: a client
    before its first request, or a server whose peer opened streams 1 (its request ended)
    and 3 (a body to come)."""
    twins = []
    for _ in range(2):
        ours = Connection(
            Configuration(
                client_side=client_side,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            ),
            {},
        )
        peer = _handshake(ours)
        ours.encoder = StaticTableEncoder()
        if not client_side:
            peer.send_headers(1, REQUEST, end_stream=True)
            peer.send_headers(3, REQUEST)
            ours.receive_data(peer.data_to_send())
        ours.data_to_send()
        twins.append(ours)
    return twins


_SENDS = st.lists(
    st.one_of(
        st.tuples(
            st.just("headers"),
            st.sampled_from([1, 3, 5, 2]),
            st.sampled_from(sorted(_SENT_BLOCKS)),
            st.booleans(),
        ),
        st.tuples(
            st.just("data"),
            st.sampled_from([1, 3, 5]),
            st.sampled_from([b"", b"abc", b"x" * 16385]),
            st.booleans(),
        ),
    ),
    max_size=6,
)


@pytest.mark.parametrize("client_side", [True, False], ids=["client", "server"])
@settings(max_examples=300, deadline=None)
@given(sends=_SENDS)
def test_frames_sent_as_bytes_are_what_h2s_path_sends(
    client_side: bool, sends: list[tuple[str, int, object, bool]]
) -> None:
    """The same sends on a connection sending as meshnode's do and on one sending through
    h2 alone: the same bytes to send, the same errors, streams, windows and state."""
    fast, plain = _sender_twins(client_side)
    results = []
    for connection, headers_sender, data_sender in (
        (fast, fast.send_headers, fast.send_data),
        (
            plain,
            lambda *a: h2.connection.H2Connection.send_headers(plain, *a),
            lambda *a: h2.connection.H2Connection.send_data(plain, *a),
        ),
    ):
        outcomes: list[object] = []
        for kind, stream_id, what, end_stream in sends:
            try:
                if kind == "headers":
                    headers_sender(stream_id, _SENT_BLOCKS[str(what)], end_stream)
                else:
                    data_sender(stream_id, what, end_stream)
                outcomes.append(bytes(connection.data_to_send()))
            except Exception as error:  # h2 raises a KeyError for data on an unknown stream
                outcomes.append(_described(error))
        streams = {
            i: (
                s.state_machine.state,
                s.outbound_flow_control_window,
                s._authority,
                s.request_method,
            )
            for i, s in connection.streams.items()
        }
        state = (connection.state_machine.state, connection.outbound_flow_control_window)
        results.append((outcomes, streams, state, connection.highest_outbound_stream_id))
    assert results[0] == results[1]


def test_requests_and_answers_travel_without_hyperframe(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the differential tests cannot see: that the common frames skip hyperframe's
    parser and serializer both ways, and that padding still goes through them."""
    used: list[str] = []
    parse, serialize = hyperframe.frame.Frame.parse_frame_header, hyperframe.frame.Frame.serialize

    def parsing(header: memoryview, strict: bool = False) -> object:
        used.append("parse")
        return parse(header, strict)

    def serializing(frame: hyperframe.frame.Frame) -> bytes:
        used.append("serialize")
        return serialize(frame)

    monkeypatch.setattr(hyperframe.frame.Frame, "parse_frame_header", staticmethod(parsing))
    monkeypatch.setattr(hyperframe.frame.Frame, "serialize", serializing)
    client, server = _sender_twins(client_side=True)[0], _sender_twins(client_side=False)[0]
    used.clear()  # the handshakes' frames
    client.send_headers(5, REQUEST, end_stream=True)
    request = server.receive_data(bytes(client.data_to_send()))
    assert [type(e).__name__ for e in request] == ["RequestReceived", "StreamEnded"]
    server.send_headers(5, [(b":status", b"200")])
    server.send_data(5, b"abc")
    answer = client.receive_data(bytes(server.data_to_send()))
    assert [type(e).__name__ for e in answer] == ["ResponseReceived", "DataReceived"]
    assert answer[1].data == b"abc" and answer[1].flow_controlled_length == 3
    assert used == []
    server.send_data(5, b"", end_stream=True, pad_length=0)  # padded: hyperframe both ways
    ended = client.receive_data(bytes(server.data_to_send()))
    assert [type(e).__name__ for e in ended] == ["DataReceived", "StreamEnded"]
    assert used == ["serialize", "parse"]


def test_importing_meshnode_patches_nothing_until_install() -> None:
    """A program that embeds the mesh client keeps its h2 (httpx, Hypercorn and grpclib may
    share it) unless it asks; ``install`` patches, once."""
    script = textwrap.dedent(
        """
        import builtins
        import h2.connection, hyperframe.frame
        from meshnode.client import open_mesh_client
        from meshnode.net.h2 import speedups as h2_speedups, session
        assert getattr(h2.connection, "repr", builtins.repr) is builtins.repr
        serialize = hyperframe.frame.Frame.serialize
        assert h2_speedups.install() and h2_speedups.install()
        assert h2.connection.repr is h2_speedups.frame_name
        assert hyperframe.frame.Frame.serialize is not serialize
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.stdout == "ok\n", result.stderr


def test_versions_it_was_not_tested_with_are_named() -> None:
    installed = {"h2": "5.0.0", "hyperframe": "6.1.0", "hpack": "4.2.0"}
    assert h2_speedups.untested_versions(installed) == ["h2 5.0.0 (tested 4.1 to 4.4)"]
    installed["h2"] = "4.4.9"
    assert h2_speedups.untested_versions(installed) == []
    assert untested("trio", ("0.27", "0.35"), "0.35.0rc1") is None
    assert untested("trio", ("0.27", "0.35"), "0.26.2") == "trio 0.26.2 (tested 0.27 to 0.35)"


def _random_frames(rng: random.Random) -> list[tuple[str, int, int, object]]:
    """What ``_frames`` draws, from a seeded generator: cases go to another process in one
    batch."""
    opening = rng.choice(["request", "response", None])
    frames: list[tuple[str, int, int, object]] = (
        [("headers", rng.choice([1, 7]), 0x4, opening)] if opening else []
    )
    for _ in range(rng.randint(0, 10)):
        kind = rng.choice(["headers", "data", "rst", "window-update", "continuation"])
        stream_id = rng.choice([1, 3, 1, 3, 0, 2, 5, 7])
        flags = rng.choice([0x4, 0x5, 0x0, 0x1, rng.randint(0, 0x2D)])
        payload = rng.choice([*sorted(_HPACK_BLOCKS), rng.randbytes(rng.randint(0, 24))])
        frames.append((kind, stream_id, flags, payload))
    return frames


def test_the_speedups_receive_what_h2_as_shipped_receives() -> None:
    """The same bytes to meshnode's ``Connection`` here (h2 patched process-wide) and to
    h2 as shipped in a process of its own (tests/support/pristine_h2.py): the same events
    or errors, bytes to send, streams, state and windows, case by case."""
    rng = random.Random(20261203)
    cases = []
    for index in range(600):
        wire = _wire(_random_frames(rng))
        cases.append(
            {"client_side": index % 2 == 0, "wire": wire.hex(), "cut": rng.randint(0, len(wire))}
        )
    pristine = subprocess.run(
        [sys.executable, "-m", "tests.support.pristine_h2"],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    expected = json.loads(pristine.stdout)
    for case, theirs in zip(cases, expected, strict=True):
        ours = Connection(Configuration(client_side=case["client_side"], header_encoding=None), {})
        mine = pristine_h2.described(
            pristine_h2.prepared(ours), bytes.fromhex(case["wire"]), case["cut"]
        )
        assert json.loads(json.dumps(mine)) == theirs, case
