"""Trace context on the wire: W3C traceparent and B3, read, written and refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.tracing.context import (
    TraceContext,
    extract,
    format_traceparent,
    inject,
    parse_b3_single,
    parse_traceparent,
    without_trace_headers,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_traceparent_is_read() -> None:
    context = parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode())
    assert context == TraceContext(int(TRACE, 16), int(SPAN, 16), True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()).sampled is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{SPAN}-01",  # the forbidden version
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}",
        "",
    ],
)
def test_a_malformed_traceparent_is_refused(value: str) -> None:
    assert parse_traceparent(value.encode()) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    context = parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever".encode())
    assert context is not None and context.trace_id == int(TRACE, 16)


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_traceparent_round_trips(trace_id: int, span_id: int, sampled: bool) -> None:
    context = TraceContext(trace_id, span_id, sampled)
    assert parse_traceparent(format_traceparent(context)) == context


def test_b3_single_and_multi_are_read_and_64_bit_ids_widened() -> None:
    short = "a3ce929d0e0e4736"
    assert parse_b3_single(f"{short}-{SPAN}-1".encode()) == TraceContext(
        int(short, 16), int(SPAN, 16), True
    )
    assert parse_b3_single(f"{TRACE}-{SPAN}-0-{SPAN}".encode()).sampled is False  # type: ignore[union-attr]
    assert parse_b3_single(b"0") is None  # a decision alone names no trace to continue
    multi = [(b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", SPAN.encode())]
    assert extract(multi, ("b3multi",)).context == TraceContext(int(TRACE, 16), int(SPAN, 16), True)


def test_the_first_configured_format_that_has_a_context_wins() -> None:
    headers = [
        (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        (b"b3", f"{'1' * 32}-{'2' * 16}-1".encode()),
    ]
    assert extract(headers, ("b3", "tracecontext")).context.trace_id == int("1" * 32, 16)  # type: ignore[union-attr]
    assert extract(headers, ("tracecontext", "b3")).context.trace_id == int(TRACE, 16)  # type: ignore[union-attr]


def test_tracestate_travels_with_the_context_it_came_with() -> None:
    headers = [(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"v=1")]
    incoming = extract(headers, ("tracecontext",))
    assert incoming.context is not None and incoming.context.state == b"v=1"
    assert (b"tracestate", b"v=1") in inject(incoming.context, ("tracecontext",))


def test_a_request_with_only_bad_trace_headers_has_headers_but_no_context() -> None:
    incoming = extract([(b"traceparent", b"garbage")], ("tracecontext",))
    assert (incoming.context, incoming.had_headers) == (None, True)
    assert extract([(b"accept", b"*/*")], ("tracecontext",)).had_headers is False


def test_every_configured_format_is_written_and_old_ones_stripped() -> None:
    context = TraceContext(int(TRACE, 16), int(SPAN, 16), False)
    written = dict(inject(context, ("tracecontext", "b3", "b3multi")))
    assert written[b"traceparent"] == f"00-{TRACE}-{SPAN}-00".encode()
    assert written[b"b3"] == f"{TRACE}-{SPAN}-0".encode()
    assert (written[b"x-b3-traceid"], written[b"x-b3-sampled"]) == (TRACE.encode(), b"0")
    kept = without_trace_headers([(b"traceparent", b"x"), (b"x-b3-flags", b"1"), (b"a", b"b")])
    assert kept == [(b"a", b"b")]
