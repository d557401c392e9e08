"""Request validation: everything h2 would refuse, plus what SECURITY-NOTES lists."""

from __future__ import annotations

import h2.exceptions
import h2.utilities
import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.net.h2 import validation
from meshnode.net.h2.validation import (
    Malformed,
    check_request,
    check_request_within,
    check_response,
    check_trailers,
    request_checks,
    response_checks,
)
from meshnode.policy.models import Limits

REQUEST_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
GOOD = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/a/b?c=d"),
    (b":authority", b"api.example:8443"),
    (b"accept", b"*/*"),
    (b"x-trace", b"a\tb"),
]


def check(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | Malformed:
    return check_request(headers, max_count=100, underscores="reject")


def h2_accepts(headers: list[tuple[bytes, bytes]]) -> bool:
    try:
        list(h2.utilities.validate_headers(headers, REQUEST_FLAGS))
    except h2.exceptions.ProtocolError:
        return False
    return True


def test_a_good_request_passes_unchanged() -> None:
    assert check(GOOD) == GOOD


def replace(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, value if n == name else v) for n, v in GOOD]


BAD = {
    "method with a space": replace(b":method", b"GE T"),
    "path with a space": replace(b":path", b"/a b"),
    "path not from the root": replace(b":path", b"a/b"),
    "path with a fragment": replace(b":path", b"/a#b"),
    "star path for GET": replace(b":path", b"*"),
    "userinfo in authority": replace(b":authority", b"user@api.example"),
    "space in authority": replace(b":authority", b"api example"),
    "scheme ftp": replace(b":scheme", b"ftp"),
    "underscore name": [*GOOD, (b"x_user", b"1")],
    "DEL in a value": [*GOOD, (b"x-a", b"a\x7fb")],
    "NUL in a value": [*GOOD, (b"x-a", b"a\x00b")],
    "CR in a value": [*GOOD, (b"x-a", b"a\rb")],
    "leading space in a value": [*GOOD, (b"x-a", b" a")],
    "trailing tab in a value": [*GOOD, (b"x-a", b"a\t")],
    "uppercase name": [*GOOD, (b"X-A", b"1")],
    "empty name": [*GOOD, (b"", b"1")],
    "connection header": [*GOOD, (b"connection", b"close")],
    "transfer-encoding": [*GOOD, (b"transfer-encoding", b"chunked")],
    "te gzip": [*GOOD, (b"te", b"gzip")],
    "host differs from authority": [*GOOD, (b"host", b"other.example")],
    "host repeated": [*GOOD, (b"host", b"api.example:8443"), (b"host", b"api.example:8443")],
    "host repeated, no authority": [
        *[h for h in GOOD if h[0] != b":authority"],
        (b"host", b"api.example"),
        (b"host", b"api.example"),
    ],
    "host with userinfo": [
        *[h for h in GOOD if h[0] != b":authority"],
        (b"host", b"user@api.example"),
    ],
    "pseudo after regular": [*GOOD, (b":method", b"GET")][1:],
    "repeated pseudo": [*GOOD[:1], *GOOD],
    "response pseudo": [(b":status", b"200"), *GOOD],
    "unknown pseudo": [*GOOD[:4], (b":protocol", b"websocket"), *GOOD[4:]],
    "no method": GOOD[1:],
    "no path": [h for h in GOOD if h[0] != b":path"],
    "plain CONNECT": [(b":method", b"CONNECT"), (b":authority", b"db.example:5432")],
    "CONNECT with a path and no protocol": replace(b":method", b"CONNECT"),
    "extended CONNECT for another protocol": [
        *replace(b":method", b"CONNECT"),
        (b":protocol", b"x"),
    ],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_malformed_request_is_a_400(case: str) -> None:
    result = check(BAD[case])
    assert isinstance(result, Malformed), case
    assert result.status == 400


def test_too_many_fields_is_431() -> None:
    headers = GOOD + [(b"x-n", b"1")] * 100
    result = check(headers)
    assert isinstance(result, Malformed) and result.status == 431


def test_options_star_and_websocket_tunnels_are_allowed() -> None:
    options = [(n, b"OPTIONS" if n == b":method" else v) for n, v in replace(b":path", b"*")]
    assert check(options) == options
    websocket = [*GOOD[:4], (b":protocol", b"websocket"), *GOOD[4:]]
    websocket = [(n, b"CONNECT" if n == b":method" else v) for n, v in websocket]
    assert check(websocket) == websocket


def test_host_goes_on_as_the_authority() -> None:
    """RFC 9113 8.3.1: a strict HTTP/2 server looks at :authority; a second host field
    would make it fail the connection, every other caller's streams on it included."""
    without = [h for h in GOOD if h[0] != b":authority"]
    assert check([*without, (b"host", b"api.example")]) == [
        *GOOD[:3],
        (b":authority", b"api.example"),
        *GOOD[4:],
    ]
    assert check([*GOOD, (b"host", b"api.example:8443")]) == GOOD


def test_underscores_can_be_dropped_or_allowed() -> None:
    headers = [*GOOD, (b"x_user", b"admin")]
    assert check_request(headers, max_count=100, underscores="drop") == GOOD
    assert check_request(headers, max_count=100, underscores="allow") == headers


def test_trailers_take_no_pseudo_headers_or_bad_names() -> None:
    assert check_trailers([(b"grpc-status", b"0")]) is None
    assert check_trailers([(b":status", b"200")]) is not None
    assert check_trailers([(b"Grpc-Status", b"0")]) is not None
    assert check_trailers([(b"x", b"a\nb")]) is not None


names = st.one_of(
    st.sampled_from(
        [b":method", b":path", b":scheme", b":authority", b":status", b"host", b"te", b"x-a"]
    ),
    st.binary(max_size=8),
)
values = st.one_of(
    st.sampled_from([b"GET", b"/", b"https", b"api", b"trailers", b"*", b"CONNECT"]),
    st.binary(max_size=8),
)
header_lists = st.lists(st.tuples(names, values), max_size=8)


@given(header_lists)
def test_whatever_arrives_gets_an_answer_and_h2_would_have_refused_nothing_we_pass(
    headers: list[tuple[bytes, bytes]],
) -> None:
    result = check(headers)
    if not isinstance(result, Malformed):
        assert h2_accepts(headers)
        assert h2_accepts(result)
        if all(name != b"host" for name, _ in headers):
            assert result == headers
        else:  # host goes on as :authority alone
            assert all(name != b"host" for name, _ in result)
            assert [f for f in result if f[0] != b":authority"] == [
                f for f in headers if f[0] not in (b"host", b":authority")
            ]


@given(st.sampled_from(sorted(BAD)), st.permutations(range(3)))
def test_malformed_stays_malformed_whatever_else_is_added(case: str, order: list[int]) -> None:
    extra = [(b"x-b", b"1"), (b"accept-language", b"en"), (b"x-c", b"2")]
    headers = BAD[case] + [extra[i] for i in order]
    assert isinstance(check(headers), Malformed)


RESPONSE_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)
response_names = st.one_of(
    st.sampled_from([b":status", b":path", b"content-length", b"te", b"connection", b"x-a"]),
    st.binary(max_size=8),
)
response_values = st.one_of(
    st.sampled_from([b"200", b"404", b"20", b"trailers", b"gzip", b"ok"]), st.binary(max_size=8)
)


@given(st.lists(st.tuples(response_names, response_values), max_size=6))
def test_a_response_passes_only_if_h2_would_have_passed_it(
    headers: list[tuple[bytes, bytes]],
) -> None:
    if check_response(headers) is None:
        list(h2.utilities.validate_headers(headers, RESPONSE_FLAGS))  # raises if refused


def test_malformed_responses_are_named() -> None:
    assert check_response([(b":status", b"200"), (b"x-a", b"1")]) is None
    assert check_response([(b"x-a", b"1")]) == "no valid :status"
    assert check_response([(b":status", b"200"), (b"connection", b"close")]) is not None
    assert check_response([(b":status", b"200"), (b":path", b"/")]) is not None
    assert check_response([(b":status", b"200"), (b"x-a", b"a\r\nb")]) is not None


def test_a_remembered_field_still_counts_as_a_regular_one() -> None:
    assert check_response([(b":status", b"200"), (b"x-seen", b"1")]) is None
    refused = check_request(
        [(b":method", b"GET"), (b"x-seen", b"1"), (b":path", b"/")],
        max_count=100,
        underscores="reject",
    )
    assert isinstance(refused, Malformed)
    assert "after a regular field" in refused.reason
    assert check_response([(b"x-seen", b"1"), (b":status", b"200")]) is not None


def test_underscore_names_are_never_remembered_past_their_rule() -> None:
    assert check_response([(b":status", b"200"), (b"x_user", b"1")]) is None
    request = [*GOOD, (b"x_user", b"1")]
    assert isinstance(check_request(request, max_count=100, underscores="reject"), Malformed)
    assert check_request(request, max_count=100, underscores="drop") == GOOD


def test_remembered_fields_stay_bounded() -> None:
    for number in range(validation.REMEMBERED_FIELDS + 10):
        assert check_response([(b":status", b"200"), (b"x-n", str(number).encode())]) is None
    assert len(validation._known_valid) <= validation.REMEMBERED_FIELDS


def test_credentials_are_never_remembered() -> None:
    cookie = (b"cookie", b"session=abcdefghijklmnopqrstuvwxyz")
    assert check_response([(b":status", b"200"), (b"set-cookie", b"id=1")]) is None
    assert not isinstance(check([*GOOD, cookie]), Malformed)
    assert cookie not in validation._known_valid
    assert (b"set-cookie", b"id=1") not in validation._known_valid


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ((b"connection", b"close"), "connection-specific field connection"),
        ((b"X-Upper", b"1"), "invalid field name X-Upper"),
        ((b"x-pad", b" leading"), "invalid characters in the value of x-pad"),
        ((b"te", b"gzip"), "te other than trailers"),
    ],
)
def test_requests_responses_and_trailers_share_the_field_rules(
    field: tuple[bytes, bytes], reason: str
) -> None:
    refused = check([*GOOD, field])
    assert isinstance(refused, Malformed) and refused.reason == reason
    assert check_response([(b":status", b"200"), field]) == reason
    assert check_trailers([field]) == reason


@given(st.lists(header_lists, min_size=1, max_size=3), st.lists(st.integers(0, 2), max_size=10))
def test_a_repeated_request_gets_the_verdict_a_full_check_gives(
    pool: list[list[tuple[bytes, bytes]]], picks: list[int]
) -> None:
    checks = request_checks(Limits())
    for pick in picks:
        headers = list(pool[pick % len(pool)])  # a new list each time, as decoded
        verdict = checks(headers)
        assert verdict == check_request_within(headers, Limits())
        if verdict == headers:
            assert verdict is headers  # the request's own fields, never the last one's


def test_a_repeat_is_judged_on_its_own_fields_not_what_a_stream_did_with_the_last() -> None:
    checks = request_checks(Limits())
    first = list(GOOD)
    assert checks(first) is first
    first.append((b"x_changed", b"by a stream"))  # the checked list went on and changed
    changed = [*GOOD, (b"x_changed", b"by a stream")]
    assert checks(changed) == check_request_within(changed, Limits()) != changed
    with_host = [*GOOD[:3], (b"host", b"api.example:8443")]
    checks([*with_host, (b"authorization", b"Bearer b")])  # rewritten: host to :authority
    secret = hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer b")
    assert checks([*with_host, secret])[-1] is secret  # equal, but this request's own


@given(st.lists(header_lists, min_size=1, max_size=3), st.lists(st.integers(0, 2), max_size=10))
def test_a_repeated_answer_gets_the_verdict_a_full_check_gives(
    pool: list[list[tuple[bytes, bytes]]], picks: list[int]
) -> None:
    checks = response_checks()
    for pick in picks:
        head = [(b":status", b"200"), *pool[pick % len(pool)][1:]]
        assert checks(list(head)) == check_response(head)
