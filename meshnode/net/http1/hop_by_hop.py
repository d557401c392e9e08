"""Hop-by-hop fields (pure): what a proxy never passes on.

RFC 9110 section 7.6.1: a proxy removes the connection-specific fields and
every field that ``Connection`` names. HTTP/2 peers may not send them at all,
but HTTP/1.1 peers do, and one rule serves both (``te: trailers`` is kept in a
request: it is the one TE HTTP/2 allows; TE is a request's field alone, RFC 9113
section 8.2.2, and leaves an answer whatever its value).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

Headers = list[tuple[bytes, bytes]]

_name = itemgetter(0)  # a field's name: the set test then runs without a list or a loop
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)


def any_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a field is hop-by-hop (``Connection``, which names others, is one): HTTP/2
    peers send none, so most header lists are passed whole after this one set test."""
    return not HOP_BY_HOP.isdisjoint(map(_name, headers))


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The fields ``Connection`` names: hop-by-hop too."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def keeps(name: bytes, value: bytes, named: frozenset[bytes], *, request: bool = True) -> bool:
    """Whether a field goes on to the next hop (``named``: what ``Connection`` lists)."""
    if name == b"te":
        return request and value.strip().lower() == b"trailers"  # HTTP/2 allows this one
    return name not in HOP_BY_HOP and name not in named


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], *, request: bool = True) -> Headers:
    """``headers`` without what the next hop must not get; ``request``: False for an
    answer's head."""
    headers = list(headers)
    if not any_hop_by_hop(headers):
        return headers
    named = connection_named(headers)
    return [field for field in headers if keeps(field[0], field[1], named, request=request)]
