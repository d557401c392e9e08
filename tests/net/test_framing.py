from __future__ import annotations

import itertools

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.h2.framing import (
    CLIENT_PREFACE,
    FrameError,
    FrameGate,
    GoAwayReceived,
    goaway_frame,
)
from meshnode.policy.models import FrameRates, Limits

LIMITS = Limits()

FRAMES = [
    SettingsFrame(0).serialize(),
    DataFrame(1, data=b"hello").serialize(),
    goaway_frame(7, 0, b"bye"),
    PingFrame(0, opaque_data=b"12345678").serialize(),
    DataFrame(3, data=b"x" * 1000).serialize(),
]
STREAM = CLIENT_PREFACE + b"".join(FRAMES)
WITHOUT_GOAWAY = CLIENT_PREFACE + b"".join(f for i, f in enumerate(FRAMES) if i != 2)


@given(st.lists(st.integers(1, len(STREAM)), max_size=20))
def test_any_chunking_passes_everything_but_goaway(cuts: list[int]) -> None:
    gate = FrameGate(LIMITS, expect_preface=True, now=0)
    passed = b""
    goaways: list[GoAwayReceived] = []
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        out, seen = gate.feed(STREAM[start:end], 0)
        passed += out
        goaways += seen
    assert passed == WITHOUT_GOAWAY
    assert goaways == [GoAwayReceived(last_stream_id=7, error_code=0, debug_data=b"bye")]


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(FrameError, match="exceeds 16384") as caught:
        gate.feed(header, 0)
    assert caught.value.error_code == 0x6


def test_a_malformed_goaway_is_a_protocol_error() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    bad = (4).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x01"
    with pytest.raises(FrameError) as caught:
        gate.feed(bad, 0)
    assert caught.value.error_code == 0x1


def test_at_most_one_incomplete_frame_is_held() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    frame = DataFrame(1, data=b"y" * 16384).serialize()
    out, _ = gate.feed(frame[:-1], 0)
    assert out == b""
    out, _ = gate.feed(frame[-1:] + frame[:5], 0)
    assert out == frame


def _ping(ack: bool = False) -> bytes:
    return bytes(PingFrame(0, opaque_data=b"12345678", flags=["ACK"] if ack else []).serialize())


FLOODS = {
    "ping-flood": (_ping(), FrameRates().ping),
    "settings-flood": (bytes(SettingsFrame(0).serialize()), FrameRates().settings),
    "priority-flood": (bytes(PriorityFrame(1).serialize()), FrameRates().priority),
    "resets-received-flood": (bytes(RstStreamFrame(1).serialize()), FrameRates().resets_received),
    "window-update-flood": (
        bytes(WindowUpdateFrame(0, window_increment=1).serialize()),
        FrameRates().window_update,
    ),
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_each_control_frame_has_a_budget_of_ten_seconds(kind: str) -> None:
    frame, rate = FLOODS[kind]
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    allowed = int(rate * 10)
    gate.feed(frame * allowed, 0)  # a burst of ten seconds' worth is fine
    gate.feed(frame * int(rate), 1.0)  # and so is the rate after that
    with pytest.raises(FrameError) as caught:
        gate.feed(frame * 2, 1.0)
    assert (caught.value.kind, caught.value.error_code) == (kind, 0xB)


def test_acknowledgements_are_free() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    gate.feed(_ping(ack=True) * 10_000, 0)


def test_sending_data_earns_window_updates() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    update = bytes(WindowUpdateFrame(0, window_increment=1).serialize())
    gate.feed(update * 10_000, 0)
    gate.budgets.earn("window_update", 10)
    gate.feed(update * 10, 0)
    with pytest.raises(FrameError):
        gate.feed(update, 0)


def test_empty_frames_in_a_row_are_a_flood() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    empty = bytes(DataFrame(1, data=b"").serialize())
    gate.feed(empty + DataFrame(1, data=b"x").serialize() + empty, 0)  # broken by payload
    with pytest.raises(FrameError) as caught:
        gate.feed(empty, 0)
    assert caught.value.kind == "empty-frame-flood"


def test_an_empty_frame_that_ends_the_stream_is_not_empty() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    end = bytes(DataFrame(1, data=b"", flags=["END_STREAM"]).serialize())
    gate.feed(end * 5, 0)


def test_empty_continuations_are_a_flood() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    start = bytes(HeadersFrame(1, data=b"\x82").serialize())
    empty = bytes(ContinuationFrame(1, data=b"").serialize())
    with pytest.raises(FrameError, match="without payload"):
        gate.feed(start + empty * 2, 0)


def test_padding_alone_is_no_payload() -> None:
    gate = FrameGate(LIMITS, expect_preface=False, now=0)
    padded = DataFrame(1, data=b"", flags=["PADDED"])
    padded.pad_length = 100
    with pytest.raises(FrameError):
        gate.feed(bytes(padded.serialize()) * 2, 0)


def test_a_stall_is_timed_from_an_incomplete_frame_or_header_block() -> None:
    gate = FrameGate(LIMITS, expect_preface=True, now=5)
    assert gate.stalled_since == 5  # the preface is owed from the start
    gate.feed(CLIENT_PREFACE + bytes(SettingsFrame(0).serialize()), 6)
    assert gate.stalled_since is None
    headers = bytes(HeadersFrame(1, data=b"\x82").serialize())  # no END_HEADERS
    gate.feed(headers, 7)
    assert gate.stalled_since == 7
    gate.feed(_ping()[:4], 8)
    assert gate.stalled_since == 7  # still the same stall
    end = ContinuationFrame(1, data=b"\x84", flags=["END_HEADERS"])
    gate.feed(_ping()[4:] + bytes(end.serialize()), 9)
    assert gate.stalled_since is None
