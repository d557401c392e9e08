"""Header rules for forwarding: the headers a proxy adds (hop-by-hop removal is
``meshnode.net.http1.hop_by_hop``, shared with the HTTP/1.1 translation). The rules are
pure; ``ForwardedHeaders`` applies them, and remembers a proxy's last plain request to
pass a repeat on after one comparison."""

from __future__ import annotations

import random

from meshnode.net.http1.hop_by_hop import any_hop_by_hop, connection_named, keeps

HeaderList = list[tuple[bytes, bytes]]

PEER_IDENTITY = b"x-meshnode-peer-identity"
# Request ids must be unique, not unguessable: a seeded generator, not a syscall per request.
_request_ids = random.Random()


def new_request_id() -> bytes:
    """A random (version 4) UUID, as text."""
    bits = _request_ids.getrandbits(128) & ~(0xF << 76 | 0x3 << 62) | (0x4 << 76 | 0x2 << 62)
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}".encode()


class ForwardedHeaders:
    """The headers a proxy sends upstream, and the request id (the caller's, or a new one).

    Appends the client to ``x-forwarded-for`` and ``forwarded`` (RFC 7239).
    ``x-meshnode-peer-identity`` is never taken from the caller: it is dropped,
    and set to ``peer_identity`` (verified by mTLS) when there is one.

    One per proxy, since callers repeat their requests' fields and most are plain
    (nothing in them to drop, merge, or keep as the id): a request whose fields equal the
    last plain one's is passed on whole after one comparison instead of a test of each
    field, its own fields, each with its own never-indexed mark."""

    def __init__(self) -> None:
        self._plain: HeaderList | None = None  # a copy of the last plain request's fields

    def __call__(
        self, headers: HeaderList, client_ip: bytes, peer_identity: str | None = None
    ) -> tuple[HeaderList, bytes]:
        if headers == self._plain:
            return _forwarding(headers.copy(), client_ip, peer_identity)
        out, forwarded_for, forwarded, request_id = _passed_on(headers)
        if not (forwarded_for or forwarded or request_id) and len(out) == len(headers):
            self._plain = out.copy()
        return _forwarding(out, client_ip, peer_identity, forwarded_for, forwarded, request_id)


def _forwarding(
    out: HeaderList,
    client_ip: bytes,
    peer_identity: str | None,
    forwarded_for: bytes = b"",
    forwarded: bytes = b"",
    request_id: bytes = b"",
) -> tuple[HeaderList, bytes]:
    """``out`` (the fields passed on) with the request id, the client appended to what
    the caller sent of ``x-forwarded-for`` and ``forwarded``, and the peer's identity."""
    if not request_id:
        request_id = new_request_id()
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


def _passed_on(headers: HeaderList) -> tuple[HeaderList, bytes, bytes, bytes]:
    """The fields that go on as they came, and the caller's ``x-forwarded-for``,
    ``forwarded`` and ``x-request-id`` (each b"" when it sent none)."""
    named = connection_named(headers) if any_hop_by_hop(headers) else None
    out: HeaderList = []
    request_id = b""
    forwarded_for = b""
    forwarded = b""
    for field in headers:
        name, value = field
        if name == b"x-forwarded-for":
            forwarded_for = forwarded_for + b", " + value if forwarded_for else value
        elif name == b"forwarded":
            forwarded = forwarded + b", " + value if forwarded else value
        elif name.startswith(b"x-meshnode-"):
            continue  # fault requests are for this node; the peer identity is never the caller's
        elif named is None or keeps(name, value, named):
            if name == b"x-request-id":
                request_id = value
            out.append(field)  # as it came: a field the caller sent never-indexed stays so
    return out, forwarded_for, forwarded, request_id
