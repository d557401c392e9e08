"""The cheaper frame repr shows exactly what hyperframe's own did."""

from __future__ import annotations

import binascii

import h2.settings
import hyperframe.flags
import hyperframe.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.h2_speedups import SettingValues, short_raw_data_repr


def hyperframes_own(data: bytes | None) -> str:
    """hyperframe 6's ``_raw_data_repr``, as published."""
    if not data:
        return "None"
    r = binascii.hexlify(data).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


@given(st.one_of(st.none(), st.binary(max_size=64)))
def test_the_same_text_for_any_body(data: bytes | None) -> None:
    assert short_raw_data_repr(data) == hyperframes_own(data)


def test_it_is_what_frames_use() -> None:
    assert hyperframe.frame._raw_data_repr is short_raw_data_repr
    frame = hyperframe.frame.DataFrame(1, data=b"\x01" * 16384)
    assert repr(frame).endswith("<hex:01010101010101010101...>")


def test_flags_accept_and_refuse_as_before() -> None:
    frame = hyperframe.frame.HeadersFrame(1, flags=["END_STREAM", "END_HEADERS"])
    assert set(frame.flags) == {"END_STREAM", "END_HEADERS"}
    assert "PADDED" not in frame.flags
    other = hyperframe.frame.DataFrame(3)
    other.flags.add("PADDED")
    with pytest.raises(ValueError, match="Unexpected flag: PRIORITY"):
        other.flags.add("PRIORITY")  # valid for HEADERS, not for DATA
    assert hyperframe.flags.Flags(iter([hyperframe.flags.Flag("ACK", 1)]))._valid_flags == {"ACK"}


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
