"""Theory of operation: one span per request through the node, one child span per try.

    caller --traceparent P--> [node: SERVER span S, parent P]
                                  try 1: CLIENT span T1, parent S --traceparent T1--> upstream
                                  try 2: CLIENT span T2, parent S --traceparent T2--> upstream

A request's trace begins as it is routed (``MeshTracer.begin``). Sampling is
parent-based: a request that brings a valid context keeps its caller's decision; one
that brings none, or a malformed one, starts a new trace, sampled at ``sample_ratio``.
What happens then:

- **sampled**: the node records a SERVER span for the request and a CLIENT span per
  try, and each try carries a context naming its own span (so the upstream's span is
  the child of the try that reached it). The caller's ``tracestate`` travels on.
- **not sampled, and no trace headers or a valid context**: nothing is recorded and the
  request goes on as it came (``begin`` returns None): the caller's decision, if any,
  holds downstream, and a request nobody traces costs next to nothing.
- **not sampled, malformed trace headers**: they are never relayed as they came; the
  node sends on an unsampled trace of its own instead, so that every hop after it
  agrees not to sample.

Spans carry OpenTelemetry's HTTP semantic conventions, the mesh's facts as attributes
(upstream, endpoint, request id, the caller's SPIFFE ID) and events (breaker rejection,
retry with its delay and reason, resend, fallback, rate limiting, injected faults); a
mesh error sets the span's status. The OpenTelemetry SDK builds and exports them
(``export.py``: its own queue and thread, so requests never wait on a collector).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from meshnode import __version__
from meshnode.policy.models import TracingPolicy
from meshnode.tracing.context import (
    Header,
    TraceContext,
    extract,
    inject,
    without_trace_headers,
)
from meshnode.tracing.export import DroppingBatchProcessor

OTLP_TRACES_PATH = "/v1/traces"
_SERVER = trace.SpanKind.SERVER
_CLIENT = trace.SpanKind.CLIENT


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector: ``endpoint`` itself when it names a path,
    else its ``/v1/traces`` (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read)."""
    stripped = endpoint.rstrip("/")
    scheme_end = stripped.find("://") + 3
    return stripped if "/" in stripped[scheme_end:] else stripped + OTLP_TRACES_PATH


class MeshTracer:
    """The node's tracer for one ``[tracing]`` section; a reload that changes the section
    makes a new one (``stop`` the old: it sends what it holds, then ends)."""

    def __init__(
        self, policy: TracingPolicy, node_name: str, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self.node_name = node_name
        self.propagation: Sequence[str] = policy.propagation
        self._ratio = policy.sample_ratio
        self._rng = rng if rng is not None else random.Random()
        exporter = OTLPSpanExporter(
            endpoint=traces_url(policy.endpoint), timeout=float(policy.export_timeout)
        )
        self.processor = DroppingBatchProcessor(exporter, max_queued=policy.max_queued_spans)
        resource = Resource.create(
            {
                "service.name": policy.service_name or node_name,
                "service.instance.id": node_name,
                "service.version": __version__,
            }
        )
        self._provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        self._provider.add_span_processor(self.processor)
        self._tracer = self._provider.get_tracer("meshnode", __version__)

    @property
    def exported(self) -> int:
        return self.processor.exported

    @property
    def dropped(self) -> int:
        return self.processor.dropped

    @property
    def finished(self) -> bool:
        """Stopped, and its export thread has ended."""
        return self.processor.finished

    def stop(self) -> None:
        self.processor.shutdown()

    def begin(
        self, headers: Sequence[Header], describe: Callable[[], tuple[str, dict[str, Any]]]
    ) -> RequestTrace | None:
        """The trace of one request whose head is ``headers``; None when the node neither
        records it nor changes its trace headers. ``describe`` names its span and gives
        its attributes, asked only when it is sampled."""
        incoming = extract(headers, self.propagation)
        parent = incoming.context
        sampled = parent.sampled if parent is not None else self._rng.random() < self._ratio
        if not sampled:
            if parent is not None or not incoming.had_headers:
                return None
            rng = self._rng
            fresh = TraceContext(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, False)
            return RequestTrace(self, None, sent=inject(fresh, self.propagation))
        context = None
        if parent is not None:
            remote = trace.SpanContext(
                parent.trace_id, parent.span_id, True, trace.TraceFlags(trace.TraceFlags.SAMPLED)
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        name, attributes = describe()
        span = self._tracer.start_span(name, context, _SERVER, attributes)
        return RequestTrace(self, span, state=parent.state if parent is not None else None)

    def start_try(self, parent: Any, name: str, attributes: dict[str, Any]) -> Any:
        return self._tracer.start_span(name, trace.set_span_in_context(parent), _CLIENT, attributes)


class RequestTrace:
    """One request's part of its trace: its span when sampled (else None, and the
    unsampled trace ``sent`` with every try), and what each try sends on. The request's
    own trace headers are replaced (``outgoing``)."""

    __slots__ = ("_tracer", "sent", "span", "state")

    def __init__(
        self,
        tracer: MeshTracer,
        span: Any,
        *,
        state: bytes | None = None,
        sent: list[Header] | None = None,
    ) -> None:
        self._tracer = tracer
        self.span = span  # None when not sampled
        self.state = state  # when sampled: the caller's tracestate, which travels on
        self.sent = sent  # when not sampled: the trace headers every try sends

    def outgoing(self, headers: list[Header]) -> list[Header]:
        """The request's headers to forward, without the trace headers it came with."""
        return without_trace_headers(headers)

    def start_try(self, name: str, attributes: dict[str, Any]) -> tuple[Any, list[Header]]:
        """A sampled request's try: its span, and the trace headers naming it."""
        assert self.span is not None
        span = self._tracer.start_try(self.span, name, attributes)
        own = span.get_span_context()
        context = TraceContext(own.trace_id, own.span_id, True, self.state)
        return span, inject(context, self._tracer.propagation)

    def end_try(self, span: Any, status: int, failure: str | None) -> None:
        """A try ended: the status it saw (0: none), and the condition it failed with."""
        end_span(span, status, failure)

    def end_lost_try(self, span: Any) -> None:
        """A try cancelled because another try of the request answered first (a hedge
        race): not a failure, so no error status."""
        span.set_attribute("meshnode.hedge.lost", True)
        span.end()

    def event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        if self.span is not None:
            self.span.add_event(name, attributes or {})

    def set(self, key: str, value: Any) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)

    def end(self, status: int, error: str | None) -> None:
        """The request ended with ``status`` sent (0: none) and the mesh ``error`` reason."""
        if self.span is not None:
            end_span(self.span, status, error)


def end_span(span: Any, status: int, error: str | None) -> None:
    """End a request's or a try's span: its status code, and an error status for a mesh
    error or a 5xx answer (OpenTelemetry's HTTP conventions)."""
    if status:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    elif status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
