"""An HPACK encoder that never uses the dynamic table, so that each field's bytes can be cached.

hpack's own encoder searches and grows the dynamic table for every field of
every header block it writes; py-spy put that at an eighth of the CPU of a
proxied request. This one encodes each field on its own (RFC 7541 6.1 indexed
when the static table holds the whole field, else 6.2.2 literal without
indexing, the name indexed when the static table knows it), so a field's
encoding depends on nothing but the field and is cached: a proxy sends the
same few fields all day. The cost is bytes on the wire: fields a dynamic table
would have shrunk to one byte go as literals each time (Huffman-coded when
that is shorter).

Fields that are unique to each message by construction (request and
trace ids) are neither cached, where they would only churn the cache, nor
Huffman-coded, which would cost more CPU than the bytes it saves.

Credentials (``net/credentials.py``) are never cached, and authorization
fields and short cookies are written as never-indexed literals (6.2.3), so
no intermediary keeps them in a table where a compression side channel could
guess them (h2's own rule). A field that arrived never-indexed (the decoder
marks it ``NeverIndexedHeaderTuple``) goes on the same way, uncached, as RFC
7541 6.2.3 asks of an intermediary.

The first header block starts with a dynamic table size update to 0
(RFC 7541 4.2), so whatever the peer's SETTINGS_HEADER_TABLE_SIZE says now or
later, the table the peer's decoder keeps for us is empty and stays in bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import hpack
from hpack import NeverIndexedHeaderTuple
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from meshnode.net.credentials import CREDENTIAL_FIELDS, must_never_index
from meshnode.net.process_cache import ProcessCache

Field = tuple[bytes, bytes]

CACHED_FIELDS: Final = 1024  # distinct fields remembered; then the cache starts afresh
TABLE_SIZE_ZERO: Final = b"\x20"  # 6.3: dynamic table size update, new size 0
_INDEXED: Final = 0x80  # 6.1
_NOT_INDEXED: Final = 0x00  # 6.2.2
_NEVER_INDEXED: Final = 0x10  # 6.2.3
UNIQUE_PER_MESSAGE: Final = frozenset(
    {b"x-request-id", b"traceparent", b"x-b3-traceid", b"x-b3-spanid", b"x-amzn-trace-id"}
)

# Each byte's Huffman code as a string of bits: joining strings and one int() is three times
# faster than hpack's bit arithmetic per byte.
_HUFFMAN_BITS: Final = [
    format(code, f"0{length}b")
    for code, length in zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)
]
_static_fields: dict[Field, int] = {}
_static_names: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _static_fields.setdefault((_name, _value), _index)
    _static_names.setdefault(_name, _index)


# Encoded fields, for every connection of the process: a field's encoding is the same on all.
_encoded: ProcessCache[Field, bytes] = ProcessCache(CACHED_FIELDS)
# Encoded names outside the static table, for the fields not cached whole (a request id's
# name is the same on every request, its value never).
_encoded_names: ProcessCache[bytes, bytes] = ProcessCache(CACHED_FIELDS)


def encode_field(
    name: bytes, value: bytes, *, never_indexed: bool = False, huffman_value: bool = True
) -> bytes:
    """One field's representation, using the static table only."""
    if not never_indexed:
        index = _static_fields.get((name, value))
        if index is not None:
            return _prefixed(_INDEXED, index, 7)
    flag = _NEVER_INDEXED if never_indexed else _NOT_INDEXED
    name_index = _static_names.get(name)
    coded_value = _string(value) if huffman_value else _prefixed(0x00, len(value), 7) + value
    if name_index is None:
        coded_name = _encoded_names.get(name)
        if coded_name is None:
            coded_name = _string(name)
            _encoded_names.remember(name, coded_name)
        return bytes([flag]) + coded_name + coded_value
    return _prefixed(flag, name_index, 4) + coded_value


def _prefixed(flag: int, integer: int, prefix_bits: int) -> bytes:
    """An integer with an N-bit prefix (RFC 7541 5.1), ``flag`` in the first byte's high
    bits. hpack's ``encode_integer`` formats a debug log line per call: a message's unique
    fields (request ids) would pay it on every request."""
    limit = (1 << prefix_bits) - 1
    if integer < limit:
        return bytes((flag | integer,))
    encoded = bytearray((flag | limit,))
    integer -= limit
    while integer >= 128:
        encoded.append((integer & 0x7F) | 0x80)
        integer >>= 7
    encoded.append(integer)
    return bytes(encoded)


def _string(data: bytes) -> bytes:
    """5.2: Huffman-coded when that is shorter, else as it is."""
    coded = huffman(data)
    if len(coded) < len(data):
        return _prefixed(0x80, len(coded), 7) + coded
    return _prefixed(0x00, len(data), 7) + data


def huffman(data: bytes) -> bytes:
    """``data`` Huffman-coded (RFC 7541 5.2), padded with the most significant bits of EOS."""
    if not data:
        return b""
    bits = "".join([_HUFFMAN_BITS[byte] for byte in data])
    bits += "1" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


class StaticTableEncoder(hpack.Encoder):
    """Stands in for hpack's encoder on an ``H2Connection`` (``conn.encoder``): h2 calls
    ``encode`` for every header block, and sets ``header_table_size`` from the peer's
    settings, which changes nothing here since the table stays empty."""

    def __init__(self) -> None:  # hpack's table is not made: it would stay empty
        self._first_block = True
        # The last block encoded whose every field was cached (nothing never-indexed, no
        # credential, no id unique to its message), and its fields: a proxy relays the
        # same answer head over and over, and its repeat is one comparison.
        self._last_fields: list[Field] | None = None
        self._last_block = b""

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's limit: the table used is 0 bytes, within any."""

    def encode(  # type: ignore[override]
        self, headers: Iterable[Field], huffman: bool = True
    ) -> bytes:
        """The header block for ``headers``, a sequence of (name, value) byte pairs."""
        fields = list(headers)
        if fields == self._last_fields and NeverIndexedHeaderTuple not in set(map(type, fields)):
            return self._last_block  # equal fields, none of them to be sent never-indexed
        cache = _encoded
        parts = []
        first_block = self._first_block
        if first_block:
            self._first_block = False
            parts.append(TABLE_SIZE_ZERO)
        repeatable = not first_block  # each field cached: the block is the same next time
        for field in fields:
            name, value = field
            if type(field) is NeverIndexedHeaderTuple:  # RFC 7541 6.2.3: passed on as it came
                parts.append(encode_field(name, value, never_indexed=True))
                repeatable = False
                continue
            encoded = cache.get(field)
            if encoded is None:
                if name in UNIQUE_PER_MESSAGE:
                    parts.append(encode_field(name, value, huffman_value=False))
                    repeatable = False
                    continue
                if name in CREDENTIAL_FIELDS:
                    flagged = must_never_index(name, value)
                    parts.append(encode_field(name, value, never_indexed=flagged))
                    repeatable = False
                    continue
                encoded = encode_field(name, value)
                cache.remember(field, encoded)
            parts.append(encoded)
        block = b"".join(parts)
        if repeatable:
            self._last_fields, self._last_block = fields, block
        return block
