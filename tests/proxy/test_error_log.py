"""A flood of the same refusal logs one line a second, and says how many it held back."""

from __future__ import annotations

import logging

import pytest

from meshnode.errors import CircuitOpen, ConcurrencyLimited
from meshnode.proxy.error_log import ErrorLog


async def test_one_line_a_second_of_each_kind_with_the_count_held_back(
    mock_clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshnode.proxy.forward")
    errors = ErrorLog()
    for stream_id in range(1, 1001, 2):  # 500 refusals within the second
        errors.answered(stream_id, ConcurrencyLimited("over the limit of 8", "api"))
    errors.answered(3, CircuitOpen("the breaker is open", "api"))  # another kind: its own line
    errors.answered(5, ConcurrencyLimited("over the limit of 8", "other"))
    mock_clock.jump(1.0)
    errors.answered(1001, ConcurrencyLimited("over the limit of 9", "api"))
    assert [record.getMessage() for record in caplog.records] == [
        "stream 1: concurrency-limited (api): over the limit of 8",
        "stream 3: circuit-open (api): the breaker is open",
        "stream 5: concurrency-limited (other): over the limit of 8",
        "stream 1001: concurrency-limited (api): over the limit of 9"
        " (and 499 more like it since the last such line)",
    ]
