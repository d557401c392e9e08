"""HTTP/1.1 <-> HTTP/2 translation and the framing checks (pure)."""

from __future__ import annotations

import h11

from meshnode.net.h2.validation import Malformed
from meshnode.net.http1.translation import (
    head_problem,
    request_to_h1,
    request_to_h2,
    response_from_h1,
    response_to_h1,
    websocket_accept,
    websocket_accepted,
)


def parsed(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_a_request_becomes_http2_fields_without_hop_by_hop_ones() -> None:
    request = parsed(
        b"POST /a?b=1 HTTP/1.1\r\nHost: api:8080\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    assert request_to_h2(request, b"http") == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"api:8080"),
        (b":path", b"/a?b=1"),
        (b"te", b"trailers"),  # the one TE HTTP/2 carries (gRPC needs it)
        (b"x-kept", b"yes"),
    ]


def test_an_absolute_target_names_the_authority() -> None:
    request = parsed(b"GET http://api/x HTTP/1.1\r\nHost: api\r\n\r\n")
    fields = request_to_h2(request, b"http")
    assert isinstance(fields, list) and fields[2:4] == [(b":authority", b"api"), (b":path", b"/x")]


def test_ambiguous_framing_is_refused() -> None:
    both = parsed(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert request_to_h2(both, b"http") == Malformed(
        400, "both content-length and transfer-encoding"
    )
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n")
    assert head_problem(conn) == "obs-fold: a header line continued on the next"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\ncontent-length: 1\r\n")
    assert head_problem(conn) is None  # not a whole head yet
    conn.receive_data(b"\r\nx")
    assert head_problem(conn) == "several content-length fields"


def test_a_request_for_http1_gets_host_and_chunked_framing() -> None:
    request = request_to_h1(
        [
            (b":method", b"PUT"),
            (b":scheme", b"http"),
            (b":authority", b"api"),
            (b":path", b"/"),
            (b"te", b"trailers"),
            (b"x-a", b"1"),
        ],
        has_body=True,
    )
    assert request.method == b"PUT" and request.target == b"/"
    assert list(request.headers) == [
        (b"host", b"api"),
        (b"x-a", b"1"),
        (b"transfer-encoding", b"chunked"),
    ]


def test_responses_both_ways() -> None:
    answer = h11.Response(status_code=404, headers=[(b"content-length", b"0"), (b"x-a", b"1")])
    assert response_from_h1(answer) == [
        (b":status", b"404"),
        (b"content-length", b"0"),
        (b"x-a", b"1"),
    ]
    head = response_to_h1([(b":status", b"204")], end_stream=True, close=True)
    assert isinstance(head, h11.Response)
    assert list(head.headers) == [(b"connection", b"close")]  # 204 takes no length


def test_websocket_handshakes_translate_and_are_checked() -> None:
    request = parsed(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    fields = request_to_h2(request, b"http")
    assert isinstance(fields, list)
    assert fields[:5] == [
        (b":method", b"CONNECT"),
        (b":scheme", b"http"),
        (b":authority", b"a"),
        (b":path", b"/chat"),
        (b":protocol", b"websocket"),
    ]
    assert (b"sec-websocket-version", b"13") in fields
    assert not any(name == b"sec-websocket-key" for name, _ in fields)  # per hop
    # RFC 6455's own example
    assert websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    switched = h11.InformationalResponse(
        status_code=101, headers=[(b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]
    )
    assert websocket_accepted(switched, b"dGhlIHNhbXBsZSBub25jZQ==") == [(b":status", b"200")]
    assert isinstance(websocket_accepted(switched, b"another key"), str)
