"""Distributed tracing: W3C Trace Context (and B3) on every hop, OpenTelemetry spans over OTLP."""
