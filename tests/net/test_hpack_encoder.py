"""The static-table HPACK encoder: what any decoder reads back, secrets never indexed."""

from __future__ import annotations

import hpack
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.credentials import CREDENTIAL_FIELDS
from meshnode.net.h2 import hpack_encoder
from meshnode.net.h2.hpack_encoder import (
    CACHED_FIELDS,
    TABLE_SIZE_ZERO,
    StaticTableEncoder,
    encode_field,
    huffman,
)

names = st.one_of(
    st.sampled_from([b":method", b":path", b":status", b"content-length", b"cookie", b"accept"]),
    st.binary(min_size=1, max_size=40),
)
fields = st.lists(st.tuples(names, st.binary(max_size=300)), max_size=20)


@given(st.lists(fields, min_size=1, max_size=5))
def test_every_block_decodes_to_the_fields_given(blocks: list[list[tuple[bytes, bytes]]]) -> None:
    encoder = StaticTableEncoder()
    decoder = hpack.Decoder()
    for block in blocks:
        assert [tuple(field) for field in decoder.decode(encoder.encode(block), raw=True)] == block
    assert len(decoder.header_table.dynamic_entries) == 0


def _marked(block: list[tuple[bytes, bytes]], marks: list[bool]) -> list[tuple[bytes, bytes]]:
    """``block`` with the fields ``marks`` picks arrived never-indexed (as a decoder hands
    them on)."""
    return [
        hpack.NeverIndexedHeaderTuple(*field) if marked else field
        for field, marked in zip(block, marks, strict=False)
    ] + block[len(marks) :]


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.booleans(), max_size=4)),
        min_size=1,
        max_size=8,
    )
)
def test_a_repeated_block_is_encoded_as_a_fresh_encoder_encodes_it(sends) -> None:
    """Blocks repeat (the same answer head relayed again), some with fields that came
    never-indexed: each is encoded as an encoder that never saw the others would."""
    heads = [
        [(b":status", b"200"), (b"server", b"nginx"), (b"x-api-key", b"k-1")],
        [(b":status", b"200"), (b"x-request-id", b"7"), (b"server", b"nginx")],
        [(b":status", b"404"), (b"authorization", b"Bearer s"), (b"server", b"nginx")],
    ]
    encoder = StaticTableEncoder()
    encoder.encode([(b":status", b"200")])  # past the first block's table size update
    for which, marks in sends:
        block = _marked(heads[which], marks)
        fresh = StaticTableEncoder()
        fresh.encode([(b":status", b"200")])
        assert encoder.encode(block) == fresh.encode(block)


def test_a_repeated_head_is_one_block_and_a_field_come_never_indexed_still_goes_so() -> None:
    encoder = StaticTableEncoder()
    encoder.encode([(b":status", b"200")])
    head = [(b":status", b"200"), (b"x-api-key", b"k-1")]
    first = encoder.encode(head)
    assert encoder.encode(list(head)) is first  # the repeat: the block kept, not rebuilt
    came = [(b":status", b"200"), hpack.NeverIndexedHeaderTuple(b"x-api-key", b"k-1")]
    decoded = hpack.Decoder().decode(encoder.encode(came), raw=True)
    assert [type(field) for field in decoded] == [hpack.HeaderTuple, hpack.NeverIndexedHeaderTuple]


def test_the_first_block_empties_the_peers_table_once() -> None:
    encoder = StaticTableEncoder()
    first = encoder.encode([(b":method", b"GET")])
    second = encoder.encode([(b":method", b"GET")])
    assert first == TABLE_SIZE_ZERO + b"\x82"
    assert second == b"\x82"
    strict = hpack.Decoder()
    strict.max_allowed_table_size = 0  # a peer that allows no dynamic table at all
    assert strict.decode(first, raw=True) == [(b":method", b"GET")]


def test_names_the_static_table_knows_are_indexed() -> None:
    assert encode_field(b":status", b"200") == b"\x88"
    literal = encode_field(b":path", b"/users/7")
    assert literal[0] == 0x04  # without indexing, name index 4
    assert encode_field(b"x-new", b"1")[0] == 0x00  # a literal name too


def test_credentials_are_never_indexed_and_never_cached() -> None:
    encoder = StaticTableEncoder()
    headers = [
        (b":method", b"GET"),
        (b"authorization", b"Bearer secret"),
        (b"cookie", b"short=1"),
        (b"cookie", b"long=" + b"x" * 40),
        (b"proxy-authorization", b"Basic eA=="),
    ]
    decoded = hpack.Decoder().decode(encoder.encode(headers), raw=True)
    secret = [isinstance(field, hpack.NeverIndexedHeaderTuple) for field in decoded]
    assert secret == [False, True, True, False, True]
    assert not [field for field in hpack_encoder._encoded if field[0] in CREDENTIAL_FIELDS]
    assert (b"authorization", b"Bearer secret") not in hpack_encoder._encoded
    assert (b"proxy-authorization", b"Basic eA==") not in hpack_encoder._encoded


def test_a_field_that_came_never_indexed_goes_on_never_indexed() -> None:
    encoder = StaticTableEncoder()
    plain = (b"x-api-key", b"k-1234")
    encoder.encode([plain])  # its plain encoding is cached now
    came = hpack.NeverIndexedHeaderTuple(*plain)  # RFC 7541 6.2.3: an intermediary keeps it so
    decoded = hpack.Decoder().decode(encoder.encode([came, plain]), raw=True)
    assert [type(field) for field in decoded] == [
        hpack.NeverIndexedHeaderTuple,
        hpack.HeaderTuple,
    ]
    assert [tuple(field) for field in decoded] == [plain, plain]


def test_request_ids_are_sent_as_they_are_and_not_cached() -> None:
    encoder = StaticTableEncoder()
    request_id = b"0f8e2c1a-9b7d-4e3f-8a6b-5c4d3e2f1a0b"
    block = encoder.encode([(b"x-request-id", request_id)])
    assert block.endswith(bytes([len(request_id)]) + request_id)  # no Huffman coding
    assert hpack.Decoder().decode(block, raw=True) == [(b"x-request-id", request_id)]
    assert (b"x-request-id", request_id) not in hpack_encoder._encoded
    assert hpack_encoder._encoded_names[b"x-request-id"] == block[2 : -len(request_id) - 1]
    again = encoder.encode([(b"x-request-id", b"another")])  # the name's coding reused
    assert hpack.Decoder().decode(again, raw=True) == [(b"x-request-id", b"another")]


def test_the_cache_stays_bounded() -> None:
    encoder = StaticTableEncoder()
    decoder = hpack.Decoder()
    for number in range(CACHED_FIELDS * 3):
        block = [(b"x-user", str(number).encode())]
        assert decoder.decode(encoder.encode(block), raw=True) == block
        assert len(hpack_encoder._encoded) <= CACHED_FIELDS


@given(st.binary(max_size=200))
def test_huffman_coding_matches_hpacks(data: bytes) -> None:
    reference = hpack.hpack.HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    assert huffman(data) == reference.encode(data)


@given(st.integers(1, 8), st.integers(0, 2**32), st.sampled_from([0x00, 0x10, 0x40, 0x80]))
def test_an_integer_is_written_as_hpack_writes_it(
    prefix_bits: int, integer: int, flag: int
) -> None:
    """RFC 7541 5.1, against hpack's own encoder (whose debug log per call it avoids)."""
    flag &= ~((1 << prefix_bits) - 1) & 0xFF
    expected = hpack.hpack.encode_integer(integer, prefix_bits)
    expected[0] |= flag
    assert hpack_encoder._prefixed(flag, integer, prefix_bits) == bytes(expected)
