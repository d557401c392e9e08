"""Header fields that carry credentials, and what that rules out.

meshnode keeps three process-wide caches of header fields (HPACK encodings,
decoded Huffman strings, fields found valid), shared by every caller's
connections. A cache hit is a few microseconds faster than a miss, and a
caller who could time that could learn whether someone else sent a value: so
no credential ever enters one. HPACK's own rule (h2's: never index
authorization fields, nor cookies short enough to guess) is kept apart: it is
about what peers may put in their tables.
"""

from __future__ import annotations

from typing import Final

CREDENTIAL_FIELDS: Final = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"}
)


def must_never_index(name: bytes, value: bytes) -> bool:
    """Sent as never-indexed (RFC 7541 6.2.3): authorization fields and short cookies."""
    return name in (b"authorization", b"proxy-authorization") or (
        name == b"cookie" and len(value) < 20
    )
