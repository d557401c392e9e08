"""Finished spans to the collector, off the event loop, in bounded memory.

The OpenTelemetry SDK's own batch processor drops spans silently when its queue is full,
and says nothing of a batch the exporter failed to send. The node must count both
(``meshnode_spans_dropped_total``): a collector that is down or slow costs spans, never
requests. So this processor keeps its own queue: ``on_end`` (on the event loop's thread)
appends a span, or counts it dropped when ``max_queued`` are waiting; one thread of its
own sends batches through the exporter, which may block for as long as its timeout and
retries take, and counts what was sent and what was lost. No lock is shared with the
loop: ``deque.append`` and ``popleft`` are atomic, and each counter has one writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)

BATCH_SIZE = 512  # spans per export request
FLUSH_INTERVAL = 1.0  # seconds a span waits at most before its batch leaves


class DroppingBatchProcessor(SpanProcessor):
    """Batches finished spans to ``exporter`` on a thread of its own; never blocks."""

    def __init__(self, exporter: SpanExporter, *, max_queued: int) -> None:
        self._exporter = exporter
        self._max_queued = max_queued
        self._queue: deque[ReadableSpan] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.exported = 0  # written by the export thread only
        self.failed = 0  # spans in batches the exporter could not send (export thread)
        self.refused = 0  # spans that found the queue full (the loop's thread)
        self._thread = threading.Thread(target=self._run, name="meshnode-spans", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.failed + self.refused

    @property
    def finished(self) -> bool:
        return self._stopping and not self._thread.is_alive()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing to do until a span ends."""

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or len(self._queue) >= self._max_queued:
            self.refused += 1
            return
        self._queue.append(span)
        if len(self._queue) >= BATCH_SIZE:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            stopping = self._stopping  # read before the last drain: what ends after is refused
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH_SIZE, len(self._queue)))]
                self._export(batch)
            if stopping:
                self._exporter.shutdown()
                return

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(batch)
        except Exception:
            log.exception("exporting %d span(s) failed", len(batch))
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(batch)
        else:
            self.failed += len(batch)

    def shutdown(self) -> None:
        """Send what is queued and stop, without waiting here: the thread finishes alone."""
        self._stopping = True
        self._wake.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wake the export thread and wait (blocking: never on the event loop) until it has
        taken the queue; False if ``timeout_millis`` passed first."""
        self._wake.set()
        deadline = time.monotonic() + timeout_millis / 1000
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue
