"""meshnode's HPACK decoder against hpack's: the same fields, the same refusals."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.h2 import hpack_decoder
from meshnode.net.h2.hpack_decoder import HeaderDecoder

names = st.one_of(
    st.sampled_from([b":method", b":path", b":authority", b"user-agent", b"cookie", b"x-id"]),
    st.binary(min_size=1, max_size=30),
)
fields = st.tuples(names, st.binary(max_size=200), st.booleans())
blocks = st.lists(st.lists(fields, max_size=12), min_size=1, max_size=6)


def outcome(decoder: hpack.Decoder, block: bytes) -> object:
    try:
        decoded = decoder.decode(block, raw=True)
    except hpack.HPACKDecodingError as error:
        return type(error)
    return [(type(field), tuple(field)) for field in decoded]


@given(blocks, st.booleans(), st.sampled_from([0, 100, 4096]))
def test_blocks_from_hpacks_encoder_decode_the_same(
    sent: list[list[tuple[bytes, bytes, bool]]], huffman: bool, table_size: int
) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    ours, reference = HeaderDecoder(), hpack.Decoder()
    for fields_sent in sent:
        block = encoder.encode(fields_sent, huffman=huffman)
        assert outcome(ours, block) == outcome(reference, block)
        assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4), st.integers(0, 8192))
def test_any_bytes_get_the_same_answer(raw_blocks: list[bytes], list_limit: int) -> None:
    ours, reference = HeaderDecoder(), hpack.Decoder()
    for decoder in (ours, reference):
        decoder.max_header_list_size = list_limit
        decoder.max_allowed_table_size = 256
    for block in raw_blocks:
        assert outcome(ours, block) == outcome(reference, block)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x80", hpack.exceptions.InvalidTableIndex),  # index 0
        (b"\xff\x80\x80\x80\x80\x80\x01", hpack.HPACKDecodingError),  # integer too long
        (b"\x00\x05ab", hpack.HPACKDecodingError),  # truncated name
        (b"\x82\x20", hpack.HPACKDecodingError),  # size update after a field
        (b"\x3f\xe2\x1f", hpack.exceptions.InvalidTableSizeError),  # over what we allowed
    ],
)
def test_malformed_blocks_are_refused(block: bytes, error: type[Exception]) -> None:
    decoder = HeaderDecoder()
    with pytest.raises(error):
        decoder.decode(block, raw=True)
    with pytest.raises(error):
        hpack.Decoder().decode(block, raw=True)


def test_the_header_list_limit_holds() -> None:
    decoder = HeaderDecoder()
    decoder.max_header_list_size = 100
    block = hpack.Encoder().encode([(b"x-big", b"v" * 80)])
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)


def test_huffman_strings_are_cached_within_bounds() -> None:
    decoder = HeaderDecoder()
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # every value sent as a literal
    for number in range(3000):
        field = [(b"x-id", str(number % 1500).encode() * 3)]
        assert decoder.decode(encoder.encode(field, huffman=True), raw=True) == field
    assert 0 < len(hpack_decoder._decoded) <= hpack_decoder.CACHED_STRINGS


def test_credentials_are_decoded_but_never_cached() -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    fields = [(b"cookie", b"session=" + b"s3cr3t" * 5), (b"authorization", b"Bearer abcdef")]
    decoded = HeaderDecoder().decode(encoder.encode(fields, huffman=True), raw=True)
    assert [tuple(field) for field in decoded] == fields
    assert not set(hpack_decoder._decoded.values()) & {value for _, value in fields}


@given(
    st.lists(st.lists(fields, max_size=6), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from([100, 400, 65536])), max_size=12),
    st.booleans(),
)
def test_repeated_blocks_decode_as_hpack_decodes_them(
    pool: list[list[tuple[bytes, bytes, bool]]],
    picks: list[tuple[int, int]],
    huffman: bool,
) -> None:
    """A few field lists sent over and over, as clients send requests (once indexed, the
    same bytes each time), under a header list limit that changes between blocks."""
    encoder = hpack.Encoder()
    ours, reference = HeaderDecoder(), hpack.Decoder()
    for pick, limit in picks:
        ours.max_header_list_size = reference.max_header_list_size = limit
        block = encoder.encode(pool[pick % len(pool)], huffman=huffman)
        assert outcome(ours, block) == outcome(reference, block)
        assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries


@given(st.lists(st.binary(max_size=24), min_size=1, max_size=3), st.lists(st.integers(0, 2)))
def test_repeated_arbitrary_bytes_get_the_same_answer(pool: list[bytes], picks: list[int]) -> None:
    ours, reference = HeaderDecoder(), hpack.Decoder()
    for decoder in (ours, reference):
        decoder.max_allowed_table_size = 256
    for pick in picks:
        block = pool[pick % len(pool)]
        assert outcome(ours, block) == outcome(reference, block)


def test_a_repeated_block_reads_the_table_as_it_is_now() -> None:
    """The same bytes name another field once the table has changed in between."""
    decoder = HeaderDecoder()
    first_dynamic = b"\xbe"  # index 62: the newest entry of the dynamic table
    decoder.decode(b"\x40\x03x-a\x011", raw=True)  # literal, indexed: x-a: 1
    assert decoder.decode(first_dynamic, raw=True) == [(b"x-a", b"1")]
    assert decoder.decode(first_dynamic, raw=True) == [(b"x-a", b"1")]
    decoder.decode(b"\x40\x03x-b\x012", raw=True)
    assert decoder.decode(first_dynamic, raw=True) == [(b"x-b", b"2")]


def test_a_repeated_block_is_held_to_todays_limit_and_handed_out_afresh() -> None:
    decoder = HeaderDecoder()
    block = b"\x84\x00\x04x-id\x28" + b"v" * 40  # :path / (static), x-id not indexed
    decoder.decode(block, raw=True).clear()  # a caller's changes stay its own
    assert decoder.decode(block, raw=True) == [(b":path", b"/"), (b"x-id", b"v" * 40)]
    decoder.max_header_list_size = 100  # the two fields count 114 bytes
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)
