"""A flood of one kind of log line becomes one line a second, saying how many it held
back; as the node logs the errors it answers and the rules peers break."""

from __future__ import annotations

import logging

import pytest

from meshnode.logs import SampledLog
from meshnode.net.violations import Violations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_a_second_of_each_kind_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "test.sampled")
    clock = Clock()
    sampled = SampledLog(logging.getLogger("test.sampled"), logging.INFO, clock=clock)
    for stream_id in range(1, 1001, 2):  # 500 refusals within the second
        sampled.log(("concurrency-limited", "api"), "stream %d: refused", stream_id)
    sampled.log(("circuit-open", "api"), "stream %d: open", 3)  # another kind: its own line
    clock.now += 0.999
    sampled.log(("concurrency-limited", "api"), "stream %d: refused", 1001)
    clock.now += 0.001
    sampled.log(("concurrency-limited", "api"), "stream %d: refused", 1003)
    assert [record.getMessage() for record in caplog.records] == [
        "stream 1: refused",
        "stream 3: open",
        "stream 1003: refused (and 500 more like it since the last such line)",
    ]


def test_protocol_violations_are_all_counted_and_sampled_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "meshnode.violations")
    violations = Violations()
    for stream_id in range(1, 201, 2):
        violations.record("outbound", "stream-error", "10.0.0.9:5000", f"stream {stream_id}")
    violations.record("outbound", "flood", "10.0.0.9:5000", "pings")
    assert violations.counts == {("outbound", "stream-error"): 100, ("outbound", "flood"): 1}
    assert [record.getMessage() for record in caplog.records] == [
        "outbound: stream-error from 10.0.0.9:5000: stream 1",
        "outbound: flood from 10.0.0.9:5000: pings",
    ]
