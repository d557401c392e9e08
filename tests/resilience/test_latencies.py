"""The recent latencies a percentile hedge delay reads."""

from __future__ import annotations

from meshnode.resilience.core.latencies import RecentLatencies


def test_no_percentile_until_enough_latencies_were_seen() -> None:
    latencies = RecentLatencies(size=100, min_samples=10)
    for _ in range(9):
        latencies.record(0.01)
    assert latencies.percentile(95) is None
    latencies.record(0.01)
    assert latencies.percentile(95) == 0.01


def test_the_percentile_is_the_nearest_rank_of_the_recent_latencies() -> None:
    latencies = RecentLatencies(size=100, min_samples=1)
    for millis in range(1, 101):  # 1 ms to 100 ms
        latencies.record(millis / 1000)
    assert latencies.percentile(95) == 0.095
    assert latencies.percentile(50) == 0.050
    assert latencies.percentile(99.9) == 0.100


def test_old_latencies_give_way_to_new_ones() -> None:
    latencies = RecentLatencies(size=64, min_samples=1)
    for _ in range(64):
        latencies.record(0.5)
    assert latencies.percentile(50) == 0.5
    for _ in range(64):  # the upstream got faster: the ring holds only the new figures
        latencies.record(0.01)
    assert latencies.percentile(99) == 0.01


def test_the_sorted_copy_is_refreshed_after_a_sixteenth_of_the_ring() -> None:
    latencies = RecentLatencies(size=64, min_samples=1)
    for _ in range(64):
        latencies.record(0.01)
    assert latencies.percentile(99) == 0.01
    for _ in range(3):  # fewer than 64 / 16: the last reading stands
        latencies.record(1.0)
    assert latencies.percentile(99) == 0.01
    latencies.record(1.0)
    assert latencies.percentile(99) == 1.0
