"""h2 and hyperframe, minus work whose result nobody uses, with the same behaviour.

Each change below was found with py-spy on proxied requests and is tested
(tests/net/test_h2_speedups.py) to keep the library's results:

- h2's ``_receive_frame`` builds ``repr(frame)`` for a trace log on every
  frame it receives, whatever the logger; that repr formats the flags and
  hexlifies the body (4 % of a proxied request). ``repr`` in h2's connection
  module (its only use there) now names the frame's class and nothing more.
- Every frame gets a ``Flags``, a Python ``MutableSet`` around a set whose
  ``__init__`` builds the set of its class's valid flag names anew: frames get
  a ``FrameFlags`` instead, a set (membership tested in C) with the same
  check on ``add``, its valid names built once per frame class.
- HEADERS and DATA frames are built through a chain of three ``__init__``\\ s
  passing ``**kwargs`` (frame, padding, priority): one flat ``__init__`` sets
  the same attributes when only the stream and data are given, as h2 does.
- Sending headers, h2 rebuilds the list to turn any text into bytes: a list
  that is all bytes already (meshnode's always is) is used as it is. The flags
  h2 builds for header validation per block depend on the side and the kind
  of event alone: built once per pair. Whether a response is informational
  is decided by its first field when that is ``:status``, as h2's loop does.
- h2's ``Settings`` keeps each setting as a deque (the current value, then
  values sent and not yet acknowledged): two ``Settings`` per connection, a
  dozen deques of 760 bytes each, a quarter of an idle connection's memory.
  ``SettingValues`` is the part of a deque h2 uses, on a list (about 80 bytes).
- ``Connection`` counts a client connection's open streams in O(1) (h2 walks
  every stream it holds each time one opens) and lets go of a stream h2 closed
  as soon as the session does.
- h2's state machines look up (state, input) in a dict for every step, two to
  three steps a frame; a plain ``Enum`` hashes in Python (the hash of its name),
  22 calls a proxied request. Enum members are singletons equal only to
  themselves, so identity hashing is the same relation at C speed: h2's
  plain enums hash by identity, and the two transition tables are rebuilt
  under the new hashes.
- A frame's flag byte is parsed through a table per frame class and byte, and
  built from the flags it has (none to three) rather than by testing each
  flag its class defines; h2 joins the frames it sends from a list, and checks
  their sizes with one comparison.
- h2's ``AllowedStreamIDs(bool)`` (an enum call) is a dict lookup, and the
  settings it reads for every stream (window size, frame size, stream limit)
  are read from their values, not through the mapping API.
- ``Configuration`` keeps h2's options as plain attributes (h2 reads them
  through descriptors) and gives it a logger whose no-op methods are C.
- The frames a request and its answer come in (whole DATA frames without
  padding, whole header blocks without padding or priority) are taken from the
  received bytes by ``Connection.receive_data`` with the same h2 calls in the
  same order as h2's own path, without a hyperframe object per frame, its flag
  set, the buffer's continuation bookkeeping and the dispatch by class: at one
  request at a time, with cold caches, a request's HEADERS took 30 µs to
  receive, 22 this way. Any other frame, and all that follows it in the same
  bytes, goes through h2 as before.
- Sending, likewise: ``send_headers`` and ``send_data`` take h2's steps on
  the connection and the stream and write the frames as bytes, without a
  hyperframe object, its flag set and its serializer (no priority, padding or
  outbound validation: those keep h2's path).
"""

from __future__ import annotations

import functools
import logging
import struct
import types
from collections.abc import Callable, Iterable, Sized
from typing import Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import hyperframe.flags
import hyperframe.frame

from meshnode.net.h2.framing import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER_SIZE,
    HEADERS,
    PADDED,
)
from meshnode.net.tested import untested


def frame_name(frame: object) -> str:
    """What h2's received-frame trace gets instead of the frame's full repr."""
    return type(frame).__name__


_flag_names: dict[int, tuple[object, frozenset[str]]] = {}


def _valid_names(defined_flags: Iterable[hyperframe.flags.Flag]) -> frozenset[str]:
    """The names of a frame class's flags, kept per list (a class's ``defined_flags``)."""
    if type(defined_flags) is not list:
        return frozenset(flag.name for flag in defined_flags)
    known = _flag_names.get(id(defined_flags))
    if known is None or known[0] is not defined_flags:  # the list held: its id stays its own
        known = (defined_flags, frozenset(flag.name for flag in defined_flags))
        _flag_names[id(defined_flags)] = known
    return known[1]


class FrameFlags(set[str], hyperframe.flags.Flags):
    """hyperframe's ``Flags`` on a set: membership (ten tests a request in serializing
    alone), iteration and size are the set's own methods instead of Python ones passing
    the call on to a set inside; ``add`` refuses a flag the frame does not define, as
    ``Flags`` does."""

    def __init__(self, defined_flags: Iterable[hyperframe.flags.Flag]) -> None:
        set.__init__(self)
        self._valid_flags = _valid_names(defined_flags)  # type: ignore[assignment]

    def add(self, value: str) -> None:
        if value not in self._valid_flags:
            msg = f"Unexpected flag: {value}. Valid flags are: {self._valid_flags}"
            raise ValueError(msg)
        set.add(self, value)

    def __repr__(self) -> str:
        return repr(sorted(self))

    @classmethod
    def empty(cls, valid: frozenset[str]) -> FrameFlags:
        """No flags yet, of a class whose valid names are known (no ``__init__`` to run)."""
        flags = set.__new__(cls)
        flags._valid_flags = valid  # type: ignore[assignment]
        return flags


def flat_init(frame_class: type[hyperframe.frame.Frame]) -> Callable[..., None]:
    """An ``__init__`` for a frame class that carries data (HEADERS, DATA) setting what its
    chain of ``__init__``\\ s sets, in one step; anything more than a stream and data, or
    a stream id of 0 (refused), goes through the chain as before."""
    chained: Callable[..., None] = frame_class.__init__
    defaults = dict(vars(frame_class(1)))
    for own in ("stream_id", "flags", "data"):
        del defaults[own]
    valid = _valid_names(frame_class.defined_flags)
    empty_flags = FrameFlags.empty

    def init(self: Any, stream_id: int, data: bytes = b"", **kwargs: Any) -> None:
        if kwargs or not stream_id:
            chained(self, stream_id, data, **kwargs)
            return
        self.__dict__.update(defaults)
        self.stream_id = stream_id
        self.flags = empty_flags(valid)
        self.data = data

    return init


_flag_bits: dict[type, dict[str, int]] = {}
_parsed_flags: dict[tuple[type, int], frozenset[str]] = {}  # 256 bytes a frame class at most
_frame_header = struct.Struct(">HBBBL")  # a frame header: length (24 bits), type, flags, id


def parse_flags(self: hyperframe.frame.Frame, flag_byte: int) -> hyperframe.flags.Flags:
    """``Frame.parse_flags``: the names a frame class's flag byte stands for, found once."""
    key = (type(self), flag_byte)
    names = _parsed_flags.get(key)
    if names is None:
        names = frozenset(name for name, bit in self.defined_flags if flag_byte & bit)
        _parsed_flags[key] = names
    self.flags |= names  # defined flags only: nothing for ``add`` to refuse
    return self.flags


def serialize(self: hyperframe.frame.Frame) -> bytes:
    """``Frame.serialize``: the flag byte from the flags set (none to three) rather than
    a membership test for each flag the class defines."""
    body = self.serialize_body()
    self.body_len = len(body)
    bits = _flag_bits.get(type(self))
    if bits is None:
        bits = _flag_bits[type(self)] = dict(self.defined_flags)
    flags = 0
    for name in self.flags:
        flags |= bits[name]
    return frame_bytes(self.type or 0, flags, self.stream_id, body)  # a frame class's type


def frame_bytes(kind: int, flags: int, stream_id: int, body: bytes) -> bytes:
    """A frame as sent: its 9-byte header (RFC 9113 4.1), then ``body``."""
    length = len(body)
    header = _frame_header.pack(
        (length >> 8) & 0xFFFF, length & 0xFF, kind, flags, stream_id & 0x7FFFFFFF
    )
    return header + body


def prepare_for_sending(self: h2.connection.H2Connection, frames: list[Any]) -> None:
    """``_prepare_for_sending`` with its check that no frame is over the peer's size as one
    comparison against the largest (h2 runs a generator for each)."""
    if not frames:
        return
    self._data_to_send += b"".join([frame.serialize() for frame in frames])
    assert max([frame.body_len for frame in frames]) <= self.max_outbound_frame_size


_to_bytes = h2.utilities.utf8_encode_headers


def bytes_headers(headers: Any) -> Any:
    """``utf8_encode_headers``: the list itself when every name and value is bytes."""
    if type(headers) is list:
        for field in headers:
            if type(field[0]) is not bytes or type(field[1]) is not bytes:
                return _to_bytes(headers)
        return headers
    return _to_bytes(headers)


_is_informational = h2.utilities.is_informational_response


def informational(headers: Any) -> bool:
    """``is_informational_response``, without a loop when ``:status`` comes first."""
    if type(headers) is list and headers and headers[0][0] == b":status":
        return bool(headers[0][1][:1] == b"1")
    return _is_informational(headers)


_validation_flags: dict[tuple[bool, type], h2.utilities.HeaderValidationFlags] = {}
_build_validation_flags = h2.stream.H2Stream._build_hdr_validation_flags


def validation_flags(self: h2.stream.H2Stream, events: Any) -> h2.utilities.HeaderValidationFlags:
    """``_build_hdr_validation_flags``, one per side and kind of event (a dozen at most)."""
    key = (bool(self.state_machine.client), type(events[0]))
    flags = _validation_flags.get(key)
    if flags is None:
        flags = _validation_flags[key] = _build_validation_flags(self, events)
    return flags


# Takes any arguments and does nothing with them, as h2's ``DummyLogger`` methods do, but
# in C: a format string without fields ignores what it is given.
_discard = "".format


class Configuration(h2.config.H2Configuration):
    """``H2Configuration`` whose options are plain attributes once set.

    h2 reads its options through Python descriptors (16 reads a proxied request)
    and logs through a Python no-op logger (17 calls). Here the options are checked
    once, by building h2's own configuration with them, then kept as plain
    attributes (the class attributes below shadow h2's descriptors), and the
    logger's methods are a C callable that ignores its arguments.
    """

    client_side = True
    header_encoding = None
    validate_outbound_headers = True
    normalize_outbound_headers = True
    split_outbound_cookies = False
    validate_inbound_headers = True
    normalize_inbound_headers = True

    def __init__(self, **options: Any) -> None:
        h2.config.H2Configuration(**options)  # raises what h2 raises for a bad option
        super().__init__(**options)
        if "logger" not in options:
            self.logger = types.SimpleNamespace(debug=_discard, trace=_discard)  # type: ignore[assignment]


_REQUIRED = object()  # a setting h2 always has (``Settings.__init__`` sets it)


def setting_reader(code: int, default: object = _REQUIRED) -> Callable[[Any], Any]:
    """A ``Settings`` property's getter reading the current value in one step; h2's goes
    through the mapping API (``self[code]`` or ``self.get(code, default)``)."""
    if default is _REQUIRED:
        return lambda settings: settings._settings[code][0]

    def read(settings: Any) -> Any:
        values = settings._settings.get(code)
        value = values[0] if values is not None else None
        return default if value is None else value

    return read


def read_settings_directly() -> None:
    """Give h2's ``Settings`` these readers for the settings it has properties for (their
    setters kept): h2 reads some of them for every stream."""
    codes = h2.settings.SettingCodes
    for name, code, default in (
        ("header_table_size", codes.HEADER_TABLE_SIZE, _REQUIRED),
        ("enable_push", codes.ENABLE_PUSH, _REQUIRED),
        ("initial_window_size", codes.INITIAL_WINDOW_SIZE, _REQUIRED),
        ("max_frame_size", codes.MAX_FRAME_SIZE, _REQUIRED),
        ("max_concurrent_streams", codes.MAX_CONCURRENT_STREAMS, 2**32 + 1),
        ("max_header_list_size", codes.MAX_HEADER_LIST_SIZE, None),
    ):
        setter = getattr(h2.settings.Settings, name).fset
        setattr(h2.settings.Settings, name, property(setting_reader(code, default), setter))


class SettingValues(list[int]):
    def popleft(self) -> int:
        return self.pop(0)


# Streams a connection remembers having reset itself, so that the peer's frames crossing
# the reset are ignored; an older one's are answered as h2 does (RFC 9113 5.1 lets an
# endpoint limit how long it ignores them).
RESETS_KEPT: Final = 1024


class Connection(h2.connection.H2Connection):
    """h2's connection; on the client side, open streams counted by the session.

    ``open_outbound_streams`` in h2 walks every stream it holds (dropping the
    closed ones) each time a stream opens: with a hundred requests in flight on
    one upstream connection, 3 % of a proxied request. A client session never
    opens more streams than the peer allows (``H2Session.accepts_streams``) and
    registers each once h2 accepted it, so its count is h2's. A server keeps h2's
    own count: a peer's new streams are counted before the session sees them.

    What reaches into h2's internals (the fast paths below, the stream-limit refusal, the
    early release of closed streams) runs only on the versions it was tested with
    (``COMPATIBLE``); on others, each step is h2's own.
    """

    def __init__(self, config: h2.config.H2Configuration, live: Sized) -> None:
        super().__init__(config)
        self._live = live  # the session's streams
        self._fast = COMPATIBLE
        if self._fast:
            self._closed_streams = ClosedStreams()  # type: ignore[assignment]
        self._in_receive = False
        # (stream id, error code) of each RST_STREAM h2 queued for what it received
        self._provoked: list[tuple[int, int]] = []
        # Streams this side reset on purpose (a cancelled try, a caller gone), lately.
        self._reset_here: dict[int, bool] = h2.utilities.SizeLimitDict(size_limit=RESETS_KEPT)

    def take_provoked_resets(self) -> list[tuple[int, int]]:
        """The resets the peer's frames made h2 send since the last call: a stream error
        (a frame on a stream it had ended or that was reset) or a stream over the limit.
        Each one costs a server what a reset the peer sends does (MadeYouReset,
        CVE-2025-8671), so the session charges them to the same kind of budget."""
        provoked = self._provoked
        if provoked:  # most reads provoke none: no new list for them
            self._provoked = []
        return provoked

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        self._reset_here[stream_id] = True
        super().reset_stream(stream_id, error_code)

    def _prepare_for_sending(self, frames: list[hyperframe.frame.Frame]) -> None:
        """Frames the peer sent on a stream this side had reset, before it saw the reset
        (an answer crossing a cancellation), are ignored (RFC 9113 5.1, "closed"): h2
        would answer each with RST_STREAM STREAM_CLOSED, which the peer did nothing to
        provoke. Any other RST_STREAM h2 queues for what it received is a provoked one."""
        if self._in_receive and any(type(f) is hyperframe.frame.RstStreamFrame for f in frames):
            frames = [
                frame
                for frame in frames
                if type(frame) is not hyperframe.frame.RstStreamFrame
                or frame.stream_id not in self._reset_here
            ]
            self._provoked += [
                (frame.stream_id, frame.error_code)
                for frame in frames
                if type(frame) is hyperframe.frame.RstStreamFrame
            ]
        super()._prepare_for_sending(frames)

    def _receive_headers_frame(
        self, frame: hyperframe.frame.HeadersFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[Any]]:
        """A new stream over the limit this side advertised is a stream error, answered
        with RST_STREAM REFUSED_STREAM (RFC 9113 5.1.2): the connection and its other
        streams live on, where h2 would end the connection. Its header block is decoded
        all the same (the peer's HPACK context must stay in step), and the stream is
        known as reset, so that its late frames are stream errors too."""
        if (
            not self._fast
            or self.config.client_side
            or frame.stream_id in self.streams
            or self.open_inbound_streams < self.local_settings.max_concurrent_streams
        ):
            return super()._receive_headers_frame(frame)
        h2.connection._decode_headers(self.decoder, frame.data)
        events: list[Any] = self.state_machine.process_input(_RECV_HEADERS)
        stream = self._get_or_create_stream(frame.stream_id, _ODD)
        stream.state_machine.process_input(_STREAM_RECV_HEADERS)
        return stream.reset_stream(h2.errors.ErrorCodes.REFUSED_STREAM), events

    @property
    def open_outbound_streams(self) -> int:
        if not self.config.client_side:
            return super().open_outbound_streams
        if len(self.streams) > 2 * len(self._live) + 16:
            super().open_outbound_streams  # noqa: B018 - drops the streams h2 closed
        return len(self._live)

    @property
    def has_output(self) -> bool:
        """Whether ``data_to_send`` would return anything."""
        return bool(self._data_to_send)

    def discard(self) -> None:
        """The session is over and reads no more. h2's connection refers to itself through
        its table of frame handlers (bound methods), the one cycle in it: dropping the table
        lets reference counting free the connection, its buffers and tables as the session
        goes, instead of the cyclic collector, which ``meshnode serve`` runs seldom."""
        self._frame_dispatch_table = {}

    def receive_data(self, data: Any) -> list[Any]:  # a buffer, as h2 takes; bytes here
        """h2's ``receive_data``, with the frames of requests and answers taken here (the
        module's docstring says why): until the first frame this does not take, then h2
        takes the rest. h2's buffer must be empty (no partial frame or header block)."""
        self._in_receive = True
        try:
            return self._receive(data)
        finally:
            self._in_receive = False

    def _receive(self, data: Any) -> list[Any]:
        if not self._fast:
            return super().receive_data(data)
        buffer = self.incoming_buffer
        pending = buffer._data or buffer._preamble_len or buffer._headers_buffer
        if pending or type(data) is not bytes:
            return super().receive_data(data)
        events: list[Any] = []
        position = 0
        end = len(data)
        try:
            while end - position >= FRAME_HEADER_SIZE:
                length = int.from_bytes(data[position : position + 3], "big")
                after = position + FRAME_HEADER_SIZE + length
                if after > end or length > self.max_inbound_frame_size:
                    break
                kind = data[position + 3]
                flags = data[position + 4]
                stream_id = int.from_bytes(data[position + 5 : position + 9], "big") & _STREAM_ID
                payload = data[position + FRAME_HEADER_SIZE : after]
                taken = None
                if kind == DATA and not flags & PADDED:
                    taken = self._take_data(stream_id, payload, bool(flags & END_STREAM))
                elif kind == HEADERS and flags & END_HEADERS and not flags & _PADDED_PRIORITY:
                    taken = self._take_headers(stream_id, payload, bool(flags & END_STREAM))
                if taken is None:
                    break
                events += taken
                position = after
        except h2.exceptions.ProtocolError as error:
            self._terminate_connection(error.error_code)  # as h2 does: a GOAWAY is queued
            raise
        if position < end:
            events += super().receive_data(data[position:])
        return events

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's ``send_headers``, its frames written as bytes (the module's docstring says
        why) when meshnode sends (no priority; no outbound normalizing or validation, which
        would need h2's own path)."""
        config = self.config
        if (
            not self._fast
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or config.normalize_outbound_headers
            or config.validate_outbound_headers
        ):
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            limit = self.remote_settings.max_concurrent_streams
            count = self.open_outbound_streams
            if count + 1 > limit:
                raise h2.exceptions.TooManyStreamsError(
                    f"Max outbound streams is {limit}, {count} open"
                )
        self.state_machine.process_input(_SEND_HEADERS)
        if stream is None:
            stream = self._get_or_create_stream(
                stream_id, h2.connection.AllowedStreamIDs(config.client_side)
            )
        self._data_to_send += _headers_sent(stream, headers, self.encoder, end_stream)

    def send_data(
        self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None
    ) -> None:
        """h2's ``send_data``, its frame written as bytes, for bytes without padding that the
        windows and the peer's frame size allow; anything else, h2's own path (and errors)."""
        stream = self.streams.get(stream_id)
        if stream is None or pad_length is not None or type(data) is not bytes or not self._fast:
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        size = len(data)
        window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
        if (size and size > window) or size > self.max_outbound_frame_size:
            super().send_data(stream_id, data, end_stream, pad_length)  # raises as h2 does
            return
        self.state_machine.process_input(_SEND_DATA)
        machine = stream.state_machine
        machine.process_input(_STREAM_SEND_DATA)
        if end_stream:
            machine.process_input(_STREAM_SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self._data_to_send += frame_bytes(DATA, END_STREAM if end_stream else 0, stream_id, data)
        self.outbound_flow_control_window -= size

    def _take_data(self, stream_id: int, payload: bytes, end_stream: bool) -> list[Any] | None:
        """h2's ``_receive_data_frame`` for a stream the peer may send on; else None."""
        stream = self.streams.get(stream_id)
        if stream is None or not _receiving(stream):
            return None
        length = len(payload)
        events: list[Any] = self.state_machine.process_input(_RECV_DATA)
        self._inbound_flow_control_window_manager.window_consumed(length)
        return events + stream.receive_data(payload, end_stream, length)[1]

    def _take_headers(self, stream_id: int, block: bytes, end_stream: bool) -> list[Any] | None:
        """h2's ``_receive_headers_frame`` for a stream the peer may send on, or one it opens
        within the limit (server side); else None."""
        stream = self.streams.get(stream_id)
        if stream is None:
            if (
                self.config.client_side
                or stream_id <= self.highest_inbound_stream_id
                or self.open_inbound_streams >= self.local_settings.max_concurrent_streams
            ):
                return None
        elif not _receiving(stream):
            return None
        headers = h2.connection._decode_headers(self.decoder, block)
        events: list[Any] = self.state_machine.process_input(_RECV_HEADERS)
        if stream is None:
            stream = self._begin_new_stream(stream_id, _ODD)
        encoding = self.config.header_encoding
        return events + stream.receive_headers(headers, end_stream, encoding)[1]

    def release(self, stream_id: int) -> None:
        """The session is done with the stream: if h2 closed it too, drop it now, as h2
        would on its next count (remembering how it closed, for late frames)."""
        stream = self.streams.get(stream_id)
        if self._fast and stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by


# What ``Connection`` reads and writes of a frame without hyperframe, beyond the frame
# gate's constants (RFC 9113 4.1, 6.2), and h2's inputs for the steps it takes.
_STREAM_ID: Final = 0x7FFFFFFF
_INITIAL_FRAME_SIZE: Final = 16384  # a stream's until the peer's SETTINGS say otherwise
_PRIORITY_FLAG: Final = 0x20
_PADDED_PRIORITY: Final = PADDED | _PRIORITY_FLAG
_RECV_DATA: Final = h2.connection.ConnectionInputs.RECV_DATA
_RECV_HEADERS: Final = h2.connection.ConnectionInputs.RECV_HEADERS
_SEND_HEADERS: Final = h2.connection.ConnectionInputs.SEND_HEADERS
_SEND_DATA: Final = h2.connection.ConnectionInputs.SEND_DATA
_STREAM_SEND_HEADERS: Final = h2.stream.StreamInputs.SEND_HEADERS
_STREAM_RECV_HEADERS: Final = h2.stream.StreamInputs.RECV_HEADERS
_STREAM_SEND_INFORMATIONAL: Final = h2.stream.StreamInputs.SEND_INFORMATIONAL_HEADERS
_STREAM_SEND_DATA: Final = h2.stream.StreamInputs.SEND_DATA
_STREAM_SEND_END_STREAM: Final = h2.stream.StreamInputs.SEND_END_STREAM
_ODD: Final = h2.connection.AllowedStreamIDs.ODD
_OPEN: Final = h2.stream.StreamState.OPEN
_HALF_CLOSED_LOCAL: Final = h2.stream.StreamState.HALF_CLOSED_LOCAL


def _headers_sent(
    stream: h2.stream.H2Stream, headers: Any, encoder: Any, end_stream: bool
) -> bytes:
    """h2's ``H2Stream.send_headers`` (the same steps in the same order), returning the
    HEADERS frame, and any CONTINUATION frames, as bytes."""
    machine = stream.state_machine
    fields = bytes_headers(headers)
    step = _STREAM_SEND_HEADERS
    if not machine.client and informational(fields):
        if end_stream:
            raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses.")
        step = _STREAM_SEND_INFORMATIONAL
    machine.process_input(step)
    block = encoder.encode(fields)
    size = stream.max_outbound_frame_size or _INITIAL_FRAME_SIZE  # h2 sets it on each stream
    first, rest = block[:size], block[size:]
    if end_stream:
        machine.process_input(_STREAM_SEND_END_STREAM)
    if machine.trailers_sent and not end_stream:
        raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
    if machine.client and stream._authority is None:
        stream._authority = h2.utilities.authority_from_headers(fields)
    stream.request_method = h2.utilities.extract_method_header(fields)
    flags = (0 if rest else END_HEADERS) | (END_STREAM if end_stream else 0)
    frames = [frame_bytes(HEADERS, flags, stream.stream_id, first)]
    while rest:
        block, rest = rest[:size], rest[size:]
        flags = 0 if rest else END_HEADERS
        frames.append(frame_bytes(CONTINUATION, flags, stream.stream_id, block))
    return b"".join(frames)


def _receiving(stream: h2.stream.H2Stream) -> bool:
    """Whether the peer may still send on ``stream`` (RFC 9113 5.1): then h2 takes its
    frames without any error the stream's state would raise."""
    state = stream.state_machine.state
    return state is _OPEN or state is _HALF_CLOSED_LOCAL


_SENT_RESET: Final = h2.stream.StreamClosedBy.SEND_RST_STREAM
_RECEIVED_RESET: Final = h2.stream.StreamClosedBy.RECV_RST_STREAM


class ClosedStreams:
    """How a connection remembers its closed streams, for frames that arrive after the close.

    h2 remembers the last 65,536 (``MAX_CLOSED_STREAMS``) however they closed: on a busy
    long-lived connection that is 5 MiB (measured: most of a node's growth under sustained
    load, which now levels off at 54 MiB instead of 68).
    What it remembers matters for streams closed by a reset: frames the peer sent before it
    saw the reset still arrive and must be ignored, and a stream h2 has forgotten would
    instead end the connection. Those are kept as long as h2 keeps them (resets are rare).
    After a normal end any frame but a WINDOW_UPDATE is a connection error, remembered or
    not (only its code differs: STREAM_CLOSED, or PROTOCOL_ERROR once forgotten): those are
    kept among the last ``ENDED_KEPT``.
    """

    ENDED_KEPT = 1024

    __slots__ = ("_ended", "_reset")

    def __init__(self) -> None:
        limit = h2.connection.H2Connection.MAX_CLOSED_STREAMS
        self._reset: dict[int, h2.stream.StreamClosedBy] = h2.utilities.SizeLimitDict(
            size_limit=limit
        )
        self._ended: dict[int, h2.stream.StreamClosedBy | None] = h2.utilities.SizeLimitDict(
            size_limit=self.ENDED_KEPT
        )

    def __setitem__(self, stream_id: int, closed_by: h2.stream.StreamClosedBy | None) -> None:
        # Compared by identity: h2's enums are rehashed at import (``hash_by_identity``).
        if closed_by is _SENT_RESET or closed_by is _RECEIVED_RESET:
            self._reset[stream_id] = closed_by
        else:
            self._ended[stream_id] = closed_by

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._reset or stream_id in self._ended

    def __getitem__(self, stream_id: int) -> h2.stream.StreamClosedBy | None:
        if stream_id in self._reset:
            return self._reset[stream_id]
        return self._ended[stream_id]


class StreamIdParity:
    """Stands in for h2's ``AllowedStreamIDs`` in its connection module: h2 calls the enum
    with a bool twice a request (an enum call runs three Python functions); here the call
    is a dict lookup, and the members are the enum's own."""

    EVEN = h2.connection.AllowedStreamIDs.EVEN
    ODD = h2.connection.AllowedStreamIDs.ODD
    __call__ = staticmethod({False: EVEN, True: ODD}.__getitem__)  # 0 and 1 are the same keys


def hash_by_identity(enums: Iterable[type], tables: Iterable[dict[Any, Any]]) -> None:
    """Give ``enums`` identity hashing, then rehash ``tables`` (keyed by their members) in
    place, so that lookups made from now on find every key."""
    for enum in enums:
        enum.__hash__ = object.__hash__  # type: ignore[assignment]
    for table in tables:
        entries = list(table.items())
        table.clear()
        table.update(entries)


# The versions these speedups were written for and tested with (pyproject.toml caps the
# same): h2's private names, hyperframe's frame internals. Any other: plain h2.
TESTED = {"h2": ("4.1", "4.4"), "hyperframe": ("6.0", "6.1"), "hpack": ("4.0", "4.2")}
log = logging.getLogger("meshnode.speedups")


def untested_versions(installed: dict[str, str] | None = None) -> list[str]:
    """What is installed that the speedups were not tested with ("h2 5.0.0 (tested 4.1 to
    4.4)"), or nothing; ``installed``: versions to judge instead of the installed ones."""
    problems = (
        untested(name, span, None if installed is None else installed[name])
        for name, span in TESTED.items()
    )
    return [problem for problem in problems if problem is not None]


# Whether ``Connection`` may take its fast paths through h2's internals (decided once, at
# import, from the versions installed); ``install`` patches h2 process-wide only then.
COMPATIBLE = not untested_versions()


@functools.cache
def install() -> bool:
    """Apply the process-wide speedups (below), once: ``meshnode serve`` does, a program
    that embeds the mesh client does only if it asks. Versions other than those tested
    leave h2 as it is, with a warning: meshnode works on plain h2, only slower."""
    problems = untested_versions()
    if problems:
        log.warning(
            "h2 speedups off, plain h2 in use: %s; meshnode works, more slowly",
            ", ".join(problems),
        )
        return False
    _patch()
    return True


def _patch() -> None:
    hash_by_identity(
        (
            h2.connection.ConnectionState,
            h2.connection.ConnectionInputs,
            h2.stream.StreamInputs,
            h2.stream.StreamClosedBy,
        ),
        (h2.connection.H2ConnectionStateMachine._transitions, h2.stream._transitions),
    )
    h2.connection.repr = frame_name  # type: ignore[attr-defined]
    h2.stream.utf8_encode_headers = bytes_headers  # type: ignore[attr-defined]
    h2.stream.is_informational_response = informational  # type: ignore[attr-defined]
    h2.stream.H2Stream._build_hdr_validation_flags = validation_flags  # type: ignore[method-assign]
    read_settings_directly()
    h2.connection.AllowedStreamIDs = StreamIdParity()  # type: ignore[misc,assignment]
    hyperframe.frame.Flags = FrameFlags  # type: ignore[attr-defined]
    hyperframe.frame.Frame.parse_flags = parse_flags  # type: ignore[method-assign]
    hyperframe.frame.Frame.serialize = serialize  # type: ignore[method-assign]
    h2.connection.H2Connection._prepare_for_sending = prepare_for_sending  # type: ignore[method-assign]
    for carrier in (hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame):
        carrier.__init__ = flat_init(carrier)  # type: ignore[method-assign]
    h2.settings.collections = types.SimpleNamespace(deque=SettingValues)  # type: ignore[attr-defined,assignment]
