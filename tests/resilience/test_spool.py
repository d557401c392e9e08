"""The durable spool: order, bounds, dead letters, and bad database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshnode.resilience.spool import Spool, SpoolError, SpoolFull


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spool(tmp_path: Path, clock: Clock | None = None) -> Spool:
    return Spool(tmp_path / "queue.db", clock=clock or Clock())


def put(s: Spool, body: bytes = b"{}", key: str | None = None, **bounds: int) -> tuple[int, str]:
    entry_id, stored_key, _ = s.enqueue(
        "pay",
        "POST",
        "/charge",
        [("content-type", "application/json")],
        body,
        idempotency_key=key,
        max_depth=bounds.get("depth", 10),
        max_bytes=bounds.get("size", 1000),
    )
    return entry_id, stored_key


def test_entries_survive_a_reopen_and_keep_their_order(tmp_path: Path) -> None:
    first = spool(tmp_path)
    a, key_a = put(first, b"a")
    _, key_b = put(first, b"b", key="caller-key")
    first.close()
    again = spool(tmp_path)
    assert [e.body for e in again.entries("pay")] == [b"a", b"b"]
    assert (key_a, key_b) == (f"meshnode-queue-{a}", "caller-key")
    due = again.next_due("pay")
    assert due is not None and due.id == a
    assert due.headers == [("content-type", "application/json")]


def test_a_failed_entry_holds_the_line_until_it_is_due(tmp_path: Path) -> None:
    clock = Clock()
    s = spool(tmp_path, clock)
    a, _ = put(s, b"a")
    put(s, b"b")
    s.failed(a, "503", retry_in=30)
    assert s.next_due("pay") is None  # b does not overtake a
    clock.now += 31
    entry = s.next_due("pay")
    assert entry is not None and (entry.id, entry.attempts, entry.last_error) == (a, 1, "503")
    s.delivered(a)
    assert [e.body for e in s.entries("pay")] == [b"b"]


def test_bounds(tmp_path: Path) -> None:
    s = spool(tmp_path)
    put(s, b"x" * 600)
    with pytest.raises(SpoolFull):
        put(s, b"y" * 600)  # over max_bytes
    put(s, b"z", depth=2)
    with pytest.raises(SpoolFull, match="holds 2 requests"):
        put(s, b"w", depth=2)


def test_dead_letters_retry_and_purge(tmp_path: Path) -> None:
    s = spool(tmp_path)
    a, key = put(s, b"a")
    s.dead_letter(a, "400 from the upstream")
    assert s.entries("pay") == []
    dead = s.dead_letters("pay")
    assert [(d.id, d.idempotency_key) for d in dead] == [(a, key)]
    assert s.stats("pay")["dead_letters"] == 1
    assert s.retry("pay") == 1
    assert [e.idempotency_key for e in s.entries("pay")] == [key]
    put(s, b"b")
    assert s.purge("pay") == 2
    assert s.stats("pay") == {"depth": 0, "bytes": 0, "oldest_age_seconds": 0.0, "dead_letters": 0}


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "queue.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="cannot use the queue database: file is not a database"):
        spool(tmp_path)


def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    s = spool(tmp_path)
    locker = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SpoolError, match="database is locked"):
            put(s)
    finally:
        locker.execute("ROLLBACK")
    put(s)
