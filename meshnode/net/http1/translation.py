"""HTTP/1.1 as meshnode's request path sees it: translation to and from HTTP/2's header form,
the framing rules that keep smuggled requests out, and telling the protocols apart.

Inside the node every request and response is a list of HTTP/2-style header fields
(pseudo-headers first, lowercase names) carried by a ``Stream``; the HTTP/1.1
sessions (``http1_server``, ``http1_client``) translate at the edge, so routing,
protections and retries never know which protocol a peer spoke.

Smuggling (RFC 9112 section 6.3, 11.2): h11 already refuses what it cannot frame
(several differing lengths, a transfer coding other than chunked, obs-fold,
invalid characters); on top of it a request or response carrying both
Content-Length and Transfer-Encoding, or several Content-Length fields even if
equal, is refused (400 for a request and the connection closed; a response is
an upstream failure), so nothing ambiguous is ever forwarded.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

import h11
import trio

from meshnode.net.h2.validation import WEBSOCKET, Malformed
from meshnode.net.http1.hop_by_hop import HOP_BY_HOP, connection_named, strip_hop_by_hop

Headers = list[tuple[bytes, bytes]]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What a WebSocket handshake carries end to end (the key and accept are per hop).
_WEBSOCKET_FIELDS: Final = (b"sec-websocket-protocol", b"sec-websocket-extensions")


def websocket_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept that proves a server read ``key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest())


def new_websocket_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def is_websocket_upgrade(request: h11.Request) -> bool:
    """An HTTP/1.1 WebSocket opening handshake: GET, ``Upgrade: websocket``, and ``Connection``
    naming upgrade."""
    if bytes(request.method) != b"GET":
        return False
    raw: Headers = [(bytes(n), bytes(v)) for n, v in request.headers]
    upgrades = {token.strip().lower() for n, v in raw if n == b"upgrade" for token in v.split(b",")}
    return b"websocket" in upgrades and b"upgrade" in connection_named(raw)


def framing_problem(headers: Headers) -> str | None:
    """Why a message's framing is ambiguous (a smuggling attempt, or a broken peer), if it is."""
    lengths = sum(1 for name, _ in headers if name == b"content-length")
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    if lengths and chunked:
        return "both content-length and transfer-encoding"
    if lengths > 1:
        return "several content-length fields"
    return None


def head_problem(conn: h11.Connection) -> str | None:
    """What h11 would let through in the head it is about to parse: a header line folded
    onto the next (obs-fold, which h11 unfolds) or Content-Length given twice (which it
    merges when the values agree). Looked at only once the whole head is buffered."""
    if conn.their_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return None
    buffered = conn.trailing_data[0]
    end = buffered.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffered[:end]).split(b"\r\n")[1:]
    if any(line[:1] in (b" ", b"\t") for line in lines):
        return "obs-fold: a header line continued on the next"
    if sum(line[:15].lower() == b"content-length:" for line in lines) > 1:
        return "several content-length fields"
    return None


def request_to_h2(request: h11.Request, scheme: bytes) -> Headers | Malformed:
    """An HTTP/1.1 request head as HTTP/2 header fields, or why it must be refused."""
    raw: Headers = [(bytes(name), bytes(value)) for name, value in request.headers]
    problem = framing_problem(raw)
    if problem is not None:
        return Malformed(400, problem)
    target = bytes(request.target)
    authority = None
    if target.startswith((b"http://", b"https://")):  # absolute form: it names the authority
        rest = target.split(b"://", 1)[1]
        authority, slash, path = rest.partition(b"/")
        target = slash + path or b"/"
    hosts = [value for name, value in raw if name == b"host"]
    if len(hosts) > 1:
        return Malformed(400, "several host fields")
    if authority is None:
        if not hosts:
            return Malformed(400, "no host field")
        authority = hosts[0]
    method = bytes(request.method)
    if method == b"CONNECT":
        return Malformed(400, "CONNECT tunnels are not proxied (only WebSocket upgrades)")
    websocket = is_websocket_upgrade(request)
    out: Headers = [
        (b":method", b"CONNECT" if websocket else method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", target),
    ]
    if websocket:  # as RFC 8441's extended CONNECT: one form for both protocols inside
        out.append(WEBSOCKET)
    out.extend((n, v) for n, v in strip_hop_by_hop(raw) if n not in (b"host", b"sec-websocket-key"))
    return out


def response_from_h1(response: h11.Response) -> Headers | str:
    """An HTTP/1.1 response head as HTTP/2 header fields, or why it cannot be relayed."""
    raw: Headers = [(bytes(name), bytes(value)) for name, value in response.headers]
    problem = framing_problem(raw)
    if problem is not None:
        return f"an ambiguous response: {problem}"
    return [
        (b":status", str(response.status_code).encode()),
        *strip_hop_by_hop(raw, request=False),
    ]


def request_to_h1(
    headers: Headers, *, has_body: bool, websocket_key: bytes | None = None
) -> h11.Request:
    """An HTTP/2-style request as an HTTP/1.1 request head (``host`` from ``:authority``);
    with ``websocket_key``, an extended CONNECT becomes the WebSocket opening handshake."""
    method = target = authority = b""
    fields: Headers = []
    length = False
    if websocket_key is not None:
        has_body = False
        fields += [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-key", websocket_key),
        ]
    for name, value in headers:
        if name == b":method":
            method = b"GET" if websocket_key is not None else value
        elif name == b":path":
            target = value
        elif name == b":authority":
            authority = value
        elif name.startswith(b":") or name in HOP_BY_HOP or name == b"host":
            continue  # te included: on HTTP/1.1 it would have to be named in Connection
        else:
            length = length or name == b"content-length"
            fields.append((name, value))
    if has_body and not length:
        fields.append((b"transfer-encoding", b"chunked"))
    return h11.Request(method=method, target=target, headers=[(b"host", authority), *fields])


def websocket_accepted(response: h11.InformationalResponse, key: bytes) -> Headers | str:
    """An upstream's 101 to our handshake as the HTTP/2 form (200), or why it is refused."""
    raw: Headers = [(bytes(name), bytes(value)) for name, value in response.headers]
    accept = next((v for n, v in raw if n == b"sec-websocket-accept"), None)
    if accept != websocket_accept(key):
        return "a WebSocket upgrade without the Sec-WebSocket-Accept our key asks for"
    return [(b":status", b"200"), *((n, v) for n, v in raw if n in _WEBSOCKET_FIELDS)]


def websocket_switch(headers: Headers, key: bytes) -> h11.InformationalResponse:
    """The 101 an HTTP/1.1 caller gets once its tunnel is up (``headers``: the 200)."""
    fields: Headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", websocket_accept(key)),
    ]
    fields += [(n, v) for n, v in headers if n in _WEBSOCKET_FIELDS]
    return h11.InformationalResponse(status_code=101, headers=fields)


def response_to_h1(
    headers: Headers, *, end_stream: bool, close: bool = False
) -> h11.Response | h11.InformationalResponse:
    """An HTTP/2-style response head as an HTTP/1.1 one (``close``: the connection ends after
    it). A response that has no length and will have a body goes out chunked (h11 chooses
    it for an HTTP/1.1 client)."""
    status = 0
    fields: Headers = []
    length = False
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":") and name not in HOP_BY_HOP:
            length = length or name == b"content-length"
            fields.append((name, value))
    if status < 200:
        return h11.InformationalResponse(status_code=status, headers=fields)
    if end_stream and not length and status not in (204, 304):
        fields.append((b"content-length", b"0"))
    if close:
        fields.append((b"connection", b"close"))
    return h11.Response(status_code=status, headers=fields)


async def sniff(transport: trio.abc.Stream, timeout: float) -> tuple[str, bytes] | None:
    """Read until the HTTP/2 preface is seen or ruled out: ``("h2" | "http1", bytes read)``,
    None if the peer closed or stayed silent for ``timeout``."""
    seen = b""
    with trio.move_on_after(timeout):
        while len(seen) < len(PREFACE) and PREFACE.startswith(seen):
            try:
                data = await transport.receive_some(len(PREFACE) - len(seen))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            if not data:
                return None
            seen += data
        protocol = "h2" if seen == PREFACE else "http1"
        return protocol, seen
    return None
