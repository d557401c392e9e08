from __future__ import annotations

import uuid

import hpack
from hypothesis import example, given
from hypothesis import strategies as st

from meshnode.errors import Timeout
from meshnode.net.http1.hop_by_hop import HOP_BY_HOP, connection_named, keeps, strip_hop_by_hop
from meshnode.proxy.headers import ForwardedHeaders, new_request_id

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"api")]


def forwarded_request_headers(
    headers: list[tuple[bytes, bytes]], client_ip: bytes, peer_identity: str | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The forwarding rules as a proxy applies them to its first request (nothing
    remembered yet): each field tested."""
    return ForwardedHeaders()(headers, client_ip, peer_identity)


def test_hop_by_hop_headers_and_those_connection_names_are_removed() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"proxy-connection", b"close"),
        (b"te", b"gzip"),
        (b"x-kept", b"yes"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-kept", b"yes")]


_names = st.sampled_from([*HOP_BY_HOP, b"x-secret", b"x-kept", b":path", b"cookie"])
_values = st.sampled_from([b"trailers", b"x-secret", b"close, X-Secret", b"1"])


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_stripping_applies_the_rule_to_every_field(headers: list[tuple[bytes, bytes]]) -> None:
    named = connection_named(headers)
    assert strip_hop_by_hop(headers) == [f for f in headers if keeps(f[0], f[1], named)]
    assert strip_hop_by_hop(headers) is not headers  # a list of its own, even when all stay
    forwarded, _ = forwarded_request_headers(headers, b"10.0.0.1")
    assert [f for f in forwarded if f in headers] == [
        f
        for f in headers
        if keeps(f[0], f[1], named) and f[0] not in (b"x-forwarded-for", b"forwarded")
    ]


def test_te_trailers_is_kept() -> None:
    assert strip_hop_by_hop([(b"te", b"trailers")]) == [(b"te", b"trailers")]


def test_an_answer_loses_te_whatever_its_value() -> None:
    """TE is a request's field alone (RFC 9113 8.2.2): an HTTP/2 caller must not get it."""
    answer = [(b":status", b"200"), (b"te", b"trailers"), (b"x-kept", b"yes")]
    assert strip_hop_by_hop(answer, request=False) == [(b":status", b"200"), (b"x-kept", b"yes")]


def test_request_id_added_when_absent() -> None:
    out, request_id = forwarded_request_headers(list(REQUEST), b"127.0.0.1")
    assert len(request_id) == 36
    assert (b"x-request-id", request_id) in out
    assert out[:3] == REQUEST


def test_request_id_kept_when_present() -> None:
    out, request_id = forwarded_request_headers([*REQUEST, (b"x-request-id", b"r-1")], b"10.0.0.1")
    assert request_id == b"r-1"
    assert [v for k, v in out if k == b"x-request-id"] == [b"r-1"]


def test_forwarding_headers_are_appended() -> None:
    incoming = [
        *REQUEST,
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"forwarded", b"for=1.1.1.1"),
    ]
    out, _ = forwarded_request_headers(incoming, b"::1")
    assert [v for k, v in out if k == b"x-forwarded-for"] == [b"1.1.1.1, 2.2.2.2, ::1"]
    assert [v for k, v in out if k == b"forwarded"] == [b'for=1.1.1.1, for="[::1]";proto=http']


def test_connection_named_headers_are_not_forwarded() -> None:
    incoming = [
        *REQUEST,
        (b"connection", b"x-internal"),
        (b"x-internal", b"1"),
        (b"te", b"trailers"),
    ]
    out, _ = forwarded_request_headers(incoming, b"127.0.0.1")
    names = [k for k, _ in out]
    assert b"x-internal" not in names
    assert b"connection" not in names
    assert (b"te", b"trailers") in out


def test_mesh_error_response() -> None:
    error = Timeout("no complete response within 3s", "payments")
    error.request_id = b"abc"
    headers, body = error.response()
    assert headers == [
        (b":status", b"504"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-meshnode-error", b"timeout"),
        (b"x-request-id", b"abc"),
    ]
    assert body == (
        b'{"error": "timeout", "upstream": "payments", "detail": "no complete response within 3s"}'
    )


def test_request_ids_are_version_4_uuids_and_differ() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text.decode())
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


def test_a_field_that_came_never_indexed_is_passed_on_as_it_came() -> None:
    """RFC 7541 6.2.3: the encoder writes such a field never-indexed again (its own test)."""
    secret = hpack.NeverIndexedHeaderTuple(b"x-api-key", b"k-1")
    out, _ = forwarded_request_headers([*REQUEST, secret], b"10.0.0.1")
    assert [type(field) for field in out if field[0] == b"x-api-key"] == [
        hpack.NeverIndexedHeaderTuple
    ]
    assert type(strip_hop_by_hop([secret])[0]) is hpack.NeverIndexedHeaderTuple


def test_a_repeated_request_keeps_its_own_never_indexed_marks() -> None:
    """The second of two equal requests is passed on from the first's verdict, with its own
    fields: one the caller now sent never-indexed stays so."""
    forwarded = ForwardedHeaders()
    forwarded([*REQUEST, (b"x-api-key", b"k-1")], b"10.0.0.1")
    secret = hpack.NeverIndexedHeaderTuple(b"x-api-key", b"k-1")
    out, _ = forwarded([*REQUEST, secret], b"10.0.0.1")
    assert [type(field) for field in out if field[0] == b"x-api-key"] == [
        hpack.NeverIndexedHeaderTuple
    ]


# The fields the forwarding rules touch, and others.
_request_names = st.sampled_from(
    [
        *(b"x-forwarded-for", b"forwarded", b"x-request-id", b"x-meshnode-fault", b"connection"),
        *(b"x-kept", b"accept", b"te"),
    ]
)


@given(
    st.lists(st.tuples(_request_names, _values), max_size=6),
    st.sampled_from([b"10.0.0.1", b"::1"]),
    st.sampled_from([None, "spiffe://mesh.local/a"]),
)
@example([(b"x-request-id", b"1")], b"10.0.0.1", None)  # not plain: the caller's id stays
def test_a_repeated_request_is_forwarded_as_the_first_was(
    fields: list[tuple[bytes, bytes]], client_ip: bytes, identity: str | None
) -> None:
    """Remembered or not, a request's fields go on as a first request's would."""
    headers = [*REQUEST, *fields]
    forwarded = ForwardedHeaders()
    expected, expected_id = forwarded_request_headers(headers, client_ip, identity)
    first, first_id = forwarded(headers.copy(), client_ip, identity)
    second, second_id = forwarded(headers.copy(), client_ip, identity)
    given_id = next((value for name, value in headers if name == b"x-request-id"), b"")
    assert (first_id == second_id == expected_id) == bool(given_id)
    for out, request_id in ((first, first_id), (second, second_id)):
        assert [f if f != (b"x-request-id", request_id) else None for f in out] == [
            f if f != (b"x-request-id", expected_id) else None for f in expected
        ]
