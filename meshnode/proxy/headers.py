"""Header rules for forwarding (pure): hop-by-hop removal and the headers a proxy adds.

RFC 9110 section 7.6.1: a proxy removes the connection-specific fields and
every field that ``Connection`` names. HTTP/2 peers may not send them at all
(h2 rejects them), but HTTP/1.1 peers do, and one rule serves both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

HeaderList = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def _keep(name: bytes, value: bytes, named: frozenset[bytes]) -> bool:
    if name == b"te":
        return value.strip().lower() == b"trailers"  # the one TE value HTTP/2 allows
    return name not in HOP_BY_HOP and name not in named


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    headers = list(headers)
    named = _connection_named(headers)
    return [(name, value) for name, value in headers if _keep(name, value, named)]


PEER_IDENTITY = b"x-meshnode-peer-identity"


def forwarded_request_headers(
    headers: HeaderList, client_ip: bytes, peer_identity: str | None = None
) -> tuple[HeaderList, bytes]:
    """Headers to send upstream, and the request id (the caller's, or a new one).

    Appends the client to ``x-forwarded-for`` and ``forwarded`` (RFC 7239).
    ``x-meshnode-peer-identity`` is never taken from the caller: it is dropped,
    and set to ``peer_identity`` (verified by mTLS) when there is one.
    """
    named = _connection_named(headers)
    out: HeaderList = []
    request_id = b""
    forwarded_for = b""
    forwarded = b""
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = forwarded_for + b", " + value if forwarded_for else value
        elif name == b"forwarded":
            forwarded = forwarded + b", " + value if forwarded else value
        elif name.startswith(b"x-meshnode-"):
            continue  # fault requests are for this node; the peer identity is never the caller's
        elif _keep(name, value, named):
            if name == b"x-request-id":
                request_id = value
            out.append((name, value))
    if not request_id:
        request_id = str(uuid.uuid4()).encode()
        out.append((b"x-request-id", request_id))
    out.append(
        (b"x-forwarded-for", forwarded_for + b", " + client_ip if forwarded_for else client_ip)
    )
    node = b'"[' + client_ip + b']"' if b":" in client_ip else client_ip
    element = b"for=" + node + b";proto=http"
    out.append((b"forwarded", forwarded + b", " + element if forwarded else element))
    if peer_identity is not None:
        out.append((PEER_IDENTITY, peer_identity.encode()))
    return out, request_id
