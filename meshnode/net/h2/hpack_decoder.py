"""hpack's decoder, with its per-field overhead taken out.

hpack's ``Decoder.decode`` copies the rest of the header block for every
literal field, builds each field twice, and formats a debug message per field
and per integer: py-spy put header decoding at a tenth of the CPU of a proxied
request. ``HeaderDecoder`` is the same decoder (it keeps hpack's
``HeaderTable`` and limits, and is what h2 calls as ``conn.decoder``) with
``decode`` written as one pass over the block by position. Every rule holds
as hpack has it: the header list size limit, table size updates only at the
start of a block and within the size we allowed, the table shrunk by the peer
when we lowered it, indexes inside the table, integers of at most five bytes,
truncation, bad Huffman codes; tests compare the two decoders on the same
input, arbitrary bytes included.

A block identical to the last one decoded, when that one left the table as it was
(nothing indexed, no size update), decodes to the same fields: the table is the same,
so they are handed out again, checked against today's limits, without a pass. A client
repeating a request, or an upstream its answer, sends the same bytes every time once its
fields are indexed. The block stays with its connection's decoder until the next one, so
what it holds (a credential too) is never seen by another connection.

Huffman-coded strings are cached by their coded bytes (a pure function, so
one bounded cache serves every connection), since a peer that does not index
a field sends the same coded value on every request; credentials' values are
not (``net/credentials.py``).
"""

from __future__ import annotations

from typing import Final

import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.hpack import DEFAULT_MAX_HEADER_LIST_SIZE
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from meshnode.net.credentials import CREDENTIAL_FIELDS
from meshnode.net.process_cache import ProcessCache

MAX_INTEGER_BYTES: Final = 5  # hpack's limit, prefix byte included: enough for 32 bits
CACHED_STRINGS: Final = 1024
CACHED_STRING_SIZE: Final = 256  # longer Huffman strings are decoded every time
_STATIC: Final = HeaderTable.STATIC_TABLE
_ENTRY_OVERHEAD: Final = 32  # RFC 7541 4.1
# hpack's field classes build through a Python ``__new__``; tuple's is the same, in C. The
# static table's fields are built once: a field is an immutable tuple, safe to share.
_new = tuple.__new__
_STATIC_FIELDS: Final = [_new(HeaderTuple, entry) for entry in _STATIC]


# Decoded Huffman strings, for every connection of the process (decoding is a pure function).
_decoded: ProcessCache[bytes, bytes] = ProcessCache(CACHED_STRINGS)


class HeaderDecoder(hpack.Decoder):
    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__(max_header_list_size)
        # The last block that left the table unchanged, its fields, and their inflated size.
        self._last_block: bytes | None = None
        self._last_fields: tuple[HeaderTuple, ...] = ()
        self._last_inflated = 0

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """The header block's fields, as ``hpack.Decoder.decode(data, raw=True)`` gives them
        (h2 always asks for raw bytes; anything else is left to hpack)."""
        if not raw:
            self._last_block = None  # hpack's own pass may change the table
            return list(super().decode(data, raw))
        if data == self._last_block:
            return self._repeated()
        self._last_block = None  # until this block is known to leave the table alone
        unchanged = True
        table = self.header_table
        dynamic = table.dynamic_entries
        limit = self.max_header_list_size
        headers: list[HeaderTuple] = []
        inflated = 0
        position = 0
        end = len(data)
        while position < end:
            first = data[position]
            if first & 0x80:  # 6.1: indexed field
                index = first & 0x7F
                if index == 0x7F:
                    index, position = _integer(data, position, 7)
                else:
                    position += 1
                if 0 < index <= len(_STATIC):
                    header = _STATIC_FIELDS[index - 1]
                elif 0 < index - len(_STATIC) <= len(dynamic):
                    header = _new(HeaderTuple, dynamic[index - len(_STATIC) - 1])
                else:
                    raise InvalidTableIndex(f"Invalid table index {index}")
            elif first & 0x40:  # 6.2.1: literal, added to the table
                header, position = self._literal(data, position, 6, never_indexed=False)
                table.add(header[0], header[1])
                unchanged = False
            elif first & 0x20:  # 6.3: table size update, before any field
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, position = _integer(data, position, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                unchanged = False
                continue
            else:  # 6.2.2 and 6.2.3: literal, not added
                header, position = self._literal(data, position, 4, never_indexed=first & 0x10)
            headers.append(header)
            inflated += _ENTRY_OVERHEAD + len(header[0]) + len(header[1])
            if inflated > limit:
                raise _oversized(limit)
        self._check_table_size()
        if unchanged:
            self._last_block = data
            self._last_fields = tuple(headers)
            self._last_inflated = inflated
        return headers

    def _repeated(self) -> list[HeaderTuple]:
        """The last block's fields again, held to the limits as they are now."""
        limit = self.max_header_list_size
        if self._last_inflated > limit:
            raise _oversized(limit)
        self._check_table_size()
        return list(self._last_fields)

    def _check_table_size(self) -> None:
        if self.header_table_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")

    def _literal(
        self, data: bytes, position: int, prefix_bits: int, *, never_indexed: int | bool
    ) -> tuple[HeaderTuple, int]:
        index, position = _integer(data, position, prefix_bits)
        if index:
            name = self._name_at(index)
        else:
            name, position = self._string(data, position)
        value, position = self._string(data, position, cache=name not in CREDENTIAL_FIELDS)
        kind = NeverIndexedHeaderTuple if never_indexed else HeaderTuple
        return _new(kind, (name, value)), position

    def _name_at(self, index: int) -> bytes:
        if index <= len(_STATIC):
            return _STATIC[index - 1][0]
        dynamic = self.header_table.dynamic_entries
        if index - len(_STATIC) <= len(dynamic):
            return dynamic[index - len(_STATIC) - 1][0]
        raise InvalidTableIndex(f"Invalid table index {index}")

    def _string(self, data: bytes, position: int, *, cache: bool = True) -> tuple[bytes, int]:
        """5.2: a string literal at ``position``, and the position after it; a Huffman-coded
        one is looked up in, and added to, the shared cache when ``cache`` says so."""
        if position >= len(data):
            raise HPACKDecodingError("Truncated header block")
        coded = data[position] & 0x80
        length, start = _integer(data, position, 7)
        after = start + length
        if after > len(data):
            raise HPACKDecodingError("Truncated header block")
        string = data[start:after]
        if not coded:
            return string, after
        if not cache:
            return decode_huffman(string), after
        plain = _decoded.get(string)
        if plain is None:
            plain = decode_huffman(string)
            if length <= CACHED_STRING_SIZE:
                _decoded.remember(string, plain)
        return plain, after


def _oversized(limit: int) -> OversizedHeaderListError:
    return OversizedHeaderListError(f"A header list larger than {limit} has been received")


def _integer(data: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """5.1: the integer at ``position`` with an N-bit prefix, and the position after it."""
    if position >= len(data):
        raise HPACKDecodingError("Truncated header block")
    mask = (1 << prefix_bits) - 1
    number = data[position] & mask
    position += 1
    if number < mask:
        return number, position
    shift = 0
    for used in range(2, MAX_INTEGER_BYTES + 2):
        if position >= len(data):
            raise HPACKDecodingError("Unable to decode HPACK integer representation")
        byte = data[position]
        position += 1
        number += (byte & 0x7F) << shift
        if byte < 0x80:
            return number, position
        shift += 7
        if used > MAX_INTEGER_BYTES:
            break
    raise HPACKDecodingError("Variable integer representation is too long")
