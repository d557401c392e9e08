"""The span export queue: bounded, never blocking, every lost span counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshnode.tracing.export import DroppingBatchProcessor


class GateExporter(SpanExporter):
    """Blocks each export until the test opens the gate; answers ``result``."""

    def __init__(self, result: SpanExportResult) -> None:
        self.result = result
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.exported: list[Any] = []

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.entered.set()
        self.gate.wait(10)
        self.exported.extend(spans)
        return self.result

    def shutdown(self) -> None:
        self.gate.set()


def test_a_full_queue_refuses_spans_at_once_and_counts_them() -> None:
    exporter = GateExporter(SpanExportResult.SUCCESS)
    processor = DroppingBatchProcessor(exporter, max_queued=3)
    processor.on_end("first")  # type: ignore[arg-type]
    processor.force_flush(0)  # wakes the thread, which takes "first" and blocks in export
    assert exporter.entered.wait(10)
    for span in range(5):
        processor.on_end(span)  # type: ignore[arg-type]
    assert (processor.refused, len(processor._queue)) == (2, 3)
    exporter.gate.set()
    assert processor.force_flush(10_000)
    processor.shutdown()
    processor._thread.join(10)
    assert processor.finished
    assert (processor.exported, processor.dropped) == (4, 2)


def test_a_failed_export_counts_its_spans_dropped() -> None:
    exporter = GateExporter(SpanExportResult.FAILURE)
    exporter.gate.set()
    processor = DroppingBatchProcessor(exporter, max_queued=10)
    for span in range(4):
        processor.on_end(span)  # type: ignore[arg-type]
    processor.shutdown()
    processor._thread.join(10)
    assert (processor.exported, processor.failed, processor.dropped) == (0, 4, 4)
    processor.on_end("late")  # type: ignore[arg-type]
    assert processor.refused == 1  # stopped: nothing more is taken
