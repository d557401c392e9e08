"""A durable request spool in SQLite: accept now, deliver later, lose nothing.

Each entry is a request (method, path, headers, body, idempotency key) for one
upstream. ``enqueue`` returns only once the entry is committed to disk (WAL,
``synchronous = FULL``), so an answer of 202 is never given for a request a
crash could lose. Entries leave in arrival order per upstream; after too many
attempts or too long a wait they move to a dead-letter table, from which an
operator can send them back (``retry``) or drop them (``purge``).

The class is synchronous (sqlite3); ``AsyncSpool`` runs it on one worker
thread so the event loop never waits on a disk sync. The node's queue fallback
and any Python program use the same spool.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream TEXT NOT NULL,
    queued_at REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_upstream ON entries (upstream, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    upstream TEXT NOT NULL,
    queued_at REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


class SpoolError(Exception):
    """The spool cannot be used (a corrupt or locked database file, a full disk)."""


class SpoolFull(SpoolError):
    """The spool holds its maximum: the entry was not stored."""


@attrs.frozen
class Entry:
    id: int
    upstream: str
    queued_at: float
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    idempotency_key: str
    attempts: int
    last_error: str | None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queued_at": self.queued_at,
            "method": self.method,
            "path": self.path,
            "idempotency_key": self.idempotency_key,
            "attempts": self.attempts,
            "body_bytes": len(self.body),
            "last_error": self.last_error,
        }


_COLUMNS = (
    "id, upstream, queued_at, method, path, headers, body, idempotency_key, attempts, last_error"
)


class Spool:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=2.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
            self._db.execute("SELECT count(*) FROM entries").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"{path}: cannot use the queue database: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def now(self) -> float:
        return self._clock()

    def enqueue(
        self,
        upstream: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        idempotency_key: str | None = None,
        max_depth: int,
        max_bytes: int,
    ) -> tuple[int, str, int]:
        """Store a request durably: its id, idempotency key (a new one if it had none), and the
        depth of the upstream's queue with it (1: the queue just started filling)."""
        with self._transaction():
            depth, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM entries WHERE upstream = ?",
                (upstream,),
            ).fetchone()
            if depth >= max_depth or size + len(body) > max_bytes:
                raise SpoolFull(f"the queue of {upstream} holds {depth} requests, {size} bytes")
            cursor = self._db.execute(
                "INSERT INTO entries (upstream, queued_at, method, path, headers, body, "
                "idempotency_key) VALUES (?, ?, ?, ?, ?, ?, '')",
                (upstream, self._clock(), method, path, json.dumps(list(headers)), body),
            )
            entry_id = int(cursor.lastrowid or 0)
            key = idempotency_key or f"meshnode-queue-{entry_id}"
            self._db.execute("UPDATE entries SET idempotency_key = ? WHERE id = ?", (key, entry_id))
        return entry_id, key, depth + 1

    def next_due(self, upstream: str) -> Entry | None:
        """The oldest entry if it is due: order is kept, so a later one never overtakes it."""
        row = self._db.execute(
            f"SELECT {_COLUMNS}, next_attempt_at FROM entries WHERE upstream = ? "
            "ORDER BY id LIMIT 1",
            (upstream,),
        ).fetchone()
        if row is None or row[-1] > self._clock():
            return None
        return _entry(row[:-1])

    def delivered(self, entry_id: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))

    def failed(self, entry_id: int, error: str, retry_in: float) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE entries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE id = ?",
                (error, self._clock() + retry_in, entry_id),
            )

    def dead_letter(self, entry_id: int, reason: str) -> None:
        with self._transaction():
            self._db.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}, dead_at, reason) "
                f"SELECT {_COLUMNS}, ?, ? FROM entries WHERE id = ?",
                (self._clock(), reason, entry_id),
            )
            self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))

    def retry(self, upstream: str) -> int:
        """Send every dead letter of ``upstream`` back to the queue; how many went back."""
        with self._transaction():
            moved = self._db.execute(
                "INSERT INTO entries (upstream, queued_at, method, path, headers, body, "
                "idempotency_key) SELECT upstream, queued_at, method, path, headers, body, "
                "idempotency_key FROM dead_letters WHERE upstream = ? ORDER BY id",
                (upstream,),
            ).rowcount
            self._db.execute("DELETE FROM dead_letters WHERE upstream = ?", (upstream,))
        return moved

    def purge(self, upstream: str) -> int:
        with self._transaction():
            removed = self._db.execute(
                "DELETE FROM entries WHERE upstream = ?", (upstream,)
            ).rowcount
            removed += self._db.execute(
                "DELETE FROM dead_letters WHERE upstream = ?", (upstream,)
            ).rowcount
        return removed

    def entries(self, upstream: str, limit: int = 100) -> list[Entry]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE upstream = ? ORDER BY id LIMIT ?",
            (upstream, limit),
        ).fetchall()
        return [_entry(row) for row in rows]

    def dead_letters(self, upstream: str, limit: int = 100) -> list[Entry]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE upstream = ? ORDER BY id LIMIT ?",
            (upstream, limit),
        ).fetchall()
        return [_entry(row) for row in rows]

    def get(self, upstream: str, entry_id: int) -> tuple[Entry, str | None] | None:
        """One entry, queued or dead (then with the reason it died); None if there is none."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE upstream = ? AND id = ?", (upstream, entry_id)
        ).fetchone()
        if row is not None:
            return _entry(row), None
        row = self._db.execute(
            f"SELECT {_COLUMNS}, reason FROM dead_letters WHERE upstream = ? AND id = ?",
            (upstream, entry_id),
        ).fetchone()
        return None if row is None else (_entry(row[:-1]), row[-1])

    def stats(self, upstream: str) -> dict[str, float]:
        depth, size, oldest = self._db.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0), min(queued_at) FROM entries "
            "WHERE upstream = ?",
            (upstream,),
        ).fetchone()
        dead = self._db.execute(
            "SELECT count(*) FROM dead_letters WHERE upstream = ?", (upstream,)
        ).fetchone()[0]
        age = self._clock() - oldest if oldest is not None else 0.0
        return {"depth": depth, "bytes": size, "oldest_age_seconds": age, "dead_letters": dead}

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, with every SQLite failure turned into ``SpoolError``."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SpoolError(f"{self._path}: {exc}") from exc

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if error is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise SpoolError(f"{self._path}: {exc}") from exc
            return
        self._db.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise SpoolError(f"{self._path}: {error}") from error


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        id=row[0],
        upstream=row[1],
        queued_at=row[2],
        method=row[3],
        path=row[4],
        headers=[(str(name), str(value)) for name, value in json.loads(row[5])],
        body=bytes(row[6]),
        idempotency_key=row[7],
        attempts=row[8],
        last_error=row[9],
    )


class AsyncSpool:
    """The spool for Trio programs: every call runs on one worker thread, in order."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: call(*args, **kwargs), limiter=self._limiter)
