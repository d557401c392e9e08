"""Trace context on the wire (pure): W3C Trace Context and B3, read and written.

- W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` is
  ``version-traceid-parentid-flags`` in lower-case hex (``00-`` + 32 + ``-`` + 16 + ``-``
  + 2); an all-zero trace or parent id, version ``ff``, or anything else malformed makes
  the header invalid, and the node starts a new trace rather than relay it. A later
  version is read by its first four fields. ``tracestate`` belongs to the caller's vendors
  and travels with a trace the node continues.
- B3 (https://github.com/openzipkin/b3-propagation): the single ``b3`` header
  (``traceid-spanid[-sampled[-parentspanid]]``, or only a sampling state) and the
  ``x-b3-*`` headers. A 64-bit trace id is widened to 128 bits with zeros on the left, as
  the specification says; ``d`` (debug) counts as sampled.

Propagation names follow OpenTelemetry's ``OTEL_PROPAGATORS``: ``tracecontext``,
``b3`` (the single header) and ``b3multi`` (the ``x-b3-*`` headers). A request's context
is read from the first configured format that has one; every configured format is
written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

Header = tuple[bytes, bytes]

TRACE_HEADERS = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_HEX = re.compile(rb"[0-9a-f]+\Z")
MAX_TRACESTATE = 512  # bytes of a caller's tracestate carried on (W3C asks for at least 512)


@attrs.frozen
class TraceContext:
    """A position in a trace: the trace, the span that is the parent of what comes next,
    and whether the trace is sampled. ``state`` is the caller's ``tracestate``."""

    trace_id: int
    span_id: int
    sampled: bool
    state: bytes | None = None


def parse_traceparent(value: bytes) -> TraceContext | None:
    """The context a ``traceparent`` value names; None when it is not a valid one."""
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(context: TraceContext) -> bytes:
    flags = b"01" if context.sampled else b"00"
    return b"00-%032x-%016x-%s" % (context.trace_id, context.span_id, flags)


def _b3_id(value: bytes, lengths: tuple[int, ...]) -> int | None:
    value = value.strip().lower()
    if len(value) not in lengths or not _HEX.match(value):
        return None
    number = int(value, 16)
    return number or None


def parse_b3_single(value: bytes) -> TraceContext | None:
    """The context of a single ``b3`` header; None when it carries none (a bare sampling
    state, like ``0``, names no trace to continue) or is malformed."""
    parts = value.strip().lower().split(b"-")
    if len(parts) < 2 or len(parts) > 4:
        return None
    trace_id = _b3_id(parts[0], (16, 32))
    span_id = _b3_id(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    sampled = parts[2] in (b"1", b"d") if len(parts) > 2 else True
    return TraceContext(trace_id, span_id, sampled)


def parse_b3_multi(headers: dict[bytes, bytes]) -> TraceContext | None:
    """The context of the ``x-b3-*`` headers; an absent ``x-b3-sampled`` is a yes, as a
    caller that sends ids without a decision defers to its own sampled trace."""
    trace = headers.get(b"x-b3-traceid")
    span = headers.get(b"x-b3-spanid")
    if trace is None or span is None:
        return None
    trace_id = _b3_id(trace, (16, 32))
    span_id = _b3_id(span, (16,))
    if trace_id is None or span_id is None:
        return None
    debug = headers.get(b"x-b3-flags", b"").strip() == b"1"
    sampled = headers.get(b"x-b3-sampled", b"1").strip().lower() in (b"1", b"true") or debug
    return TraceContext(trace_id, span_id, sampled)


@attrs.frozen
class Incoming:
    """What a request brought: its context (None: none, or none valid) and whether it
    carried trace headers at all (those are replaced, never relayed as they came)."""

    context: TraceContext | None
    had_headers: bool


def extract(headers: Iterable[Header], propagation: Sequence[str]) -> Incoming:
    """Read a request's trace context, from the first configured format that has one."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in TRACE_HEADERS and name not in found:
            found[name] = value
    if not found:
        return Incoming(None, False)
    for kind in propagation:
        context = None
        if kind == "tracecontext" and b"traceparent" in found:
            context = parse_traceparent(found[b"traceparent"])
            state = found.get(b"tracestate")
            if context is not None and state is not None and len(state) <= MAX_TRACESTATE:
                context = attrs.evolve(context, state=state)
        elif kind in ("b3", "b3multi"):
            single = found.get(b"b3")
            context = parse_b3_single(single) if single is not None else None
            if context is None:
                context = parse_b3_multi(found)
        if context is not None:
            return Incoming(context, True)
    return Incoming(None, True)


def inject(context: TraceContext, propagation: Sequence[str]) -> list[Header]:
    """The headers that carry ``context`` to the next hop, one set per configured format."""
    out: list[Header] = []
    for kind in propagation:
        if kind == "tracecontext":
            out.append((b"traceparent", format_traceparent(context)))
            if context.state is not None:
                out.append((b"tracestate", context.state))
        elif kind == "b3":
            sampled = b"1" if context.sampled else b"0"
            out.append((b"b3", b"%032x-%016x-%s" % (context.trace_id, context.span_id, sampled)))
        elif kind == "b3multi":
            out.append((b"x-b3-traceid", b"%032x" % context.trace_id))
            out.append((b"x-b3-spanid", b"%016x" % context.span_id))
            out.append((b"x-b3-sampled", b"1" if context.sampled else b"0"))
    return out


def without_trace_headers(headers: Sequence[Header]) -> list[Header]:
    return [(name, value) for name, value in headers if name not in TRACE_HEADERS]
