from __future__ import annotations

import itertools

import pytest
from hyperframe.frame import DataFrame, PingFrame, SettingsFrame
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.framing import (
    CLIENT_PREFACE,
    FrameError,
    FrameGate,
    GoAwayReceived,
    goaway_frame,
)

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
    gate = FrameGate(max_frame_size=16384, expect_preface=True)
    passed = b""
    goaways: list[GoAwayReceived] = []
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        out, seen = gate.feed(STREAM[start:end])
        passed += out
        goaways += seen
    assert passed == WITHOUT_GOAWAY
    assert goaways == [GoAwayReceived(last_stream_id=7, error_code=0, debug_data=b"bye")]


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    gate = FrameGate(max_frame_size=16384, expect_preface=False)
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(FrameError, match="exceeds 16384") as caught:
        gate.feed(header)
    assert caught.value.error_code == 0x6


def test_a_malformed_goaway_is_a_protocol_error() -> None:
    gate = FrameGate(max_frame_size=16384, expect_preface=False)
    bad = (4).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x01"
    with pytest.raises(FrameError) as caught:
        gate.feed(bad)
    assert caught.value.error_code == 0x1


def test_at_most_one_incomplete_frame_is_held() -> None:
    gate = FrameGate(max_frame_size=16384, expect_preface=False)
    frame = DataFrame(1, data=b"y" * 16384).serialize()
    out, _ = gate.feed(frame[:-1])
    assert out == b""
    out, _ = gate.feed(frame[-1:] + frame[:5])
    assert out == frame
