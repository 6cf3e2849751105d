"""The inference log: an append-only SQLite database in WAL mode on the detector's volume.

Ingest is durable before it is acknowledged: request handlers hand their event (raw body bytes, parsed
later by the monitor) to one writer thread, which commits everything that queued up while the previous
commit was running, plus what arrives within ``commit_wait_ms``, in one transaction (group commit) and
only then resolves the handlers' futures (one wake-up of the event loop per batch), so the 2xx always
follows a durable write. The monitor reads
the log by sequence number; its window boundaries are stored in the ``state`` table, so after a crash it
resumes each window from the log where it was.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relearn.errors import Unavailable
from relearn.monitoring.payloads import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, ce_id TEXT NOT NULL, type TEXT NOT NULL, track TEXT NOT NULL,
    time TEXT NOT NULL, received REAL NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    transaction_id TEXT NOT NULL, track TEXT NOT NULL, time REAL NOT NULL, score REAL NOT NULL,
    version TEXT, PRIMARY KEY (transaction_id, track));
CREATE INDEX IF NOT EXISTS predictions_by_track_time ON predictions (track, time);
CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT PRIMARY KEY, is_fraud INTEGER NOT NULL, label_time REAL NOT NULL,
    received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (and create) the log with WAL journaling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    _migrate(conn)
    conn.executescript(SCHEMA)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Upgrade a log written before predictions kept their model version.

    One prediction per transaction becomes one per (transaction, track), since a shadow and stable both
    score a mirrored transaction; migrated rows have no version.
    """
    columns = [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
    if columns and "version" not in columns:
        conn.executescript(
            "BEGIN IMMEDIATE; ALTER TABLE predictions RENAME TO predictions_v1;"
            + SCHEMA
            + "INSERT INTO predictions (transaction_id, track, time, score) "
            "SELECT transaction_id, track, time, score FROM predictions_v1; "
            "DROP TABLE predictions_v1; COMMIT;"
        )


class LogWriteError(Unavailable):
    """The log could not store a batch (disk full, I/O error, database down): nothing of it was acked."""


class GroupCommitLog:
    """Group commit: one writer thread stores what queued up, then wakes the waiting handlers at once.

    Subclasses say where a batch goes (:meth:`_write`); :class:`EventLog` writes SQLite,
    :class:`relearn.monitoring.shared_log.SharedEventLog` PostgreSQL.
    """

    def __init__(self, wait_ms: float = 2.0, max_batch: int = 2000) -> None:
        self._wait = wait_ms / 1000.0
        self._max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-log-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def append(self, event: Event) -> None:
        """Append one event; returns once it is committed."""
        await self.append_many([event])

    async def append_many(self, events: list[Event]) -> None:
        """Append events in one transaction (a batch is all or nothing); returns once they are committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((events, loop, future))
        await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self._wait
            while len(batch) < self._max_batch:
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _write(self, events: list[Event], now: float) -> None:
        raise NotImplementedError

    def _close_store(self) -> None:
        raise NotImplementedError

    def _commit(self, batch: list[Any]) -> None:
        error: BaseException | None = None
        try:
            self._write([e for es, _, _ in batch for e in es], time.time())
        except Exception as exc:  # disk full, I/O error, database down: the handlers answer 5xx
            error = LogWriteError(str(exc) or type(exc).__name__)
        # One wake-up per event loop and batch (not per event): the handlers of a batch resume together.
        waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, loop, future in batch:
            waiting.setdefault(loop, []).append(future)
        for loop, futures in waiting.items():
            loop.call_soon_threadsafe(_resolve_all, futures, error)

    def close(self) -> None:
        """Flush pending appends and stop the writer."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._close_store()


class EventLog(GroupCommitLog):
    """The embedded inference log: group-committing appender to SQLite."""

    def __init__(self, path: Path, synchronous: str = "FULL", wait_ms: float = 2.0, max_batch: int = 2000):
        super().__init__(wait_ms, max_batch)
        self.path = path
        self._writer = connect(path, synchronous)
        self.start()

    def _write(self, events: list[Event], now: float) -> None:
        with self._writer:
            insert_events(self._writer, [(e.ce_id, e.type, e.track, e.time, now, e.body) for e in events])

    def _close_store(self) -> None:
        self._writer.close()


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def read_events(conn: sqlite3.Connection, after: int, limit: int = 5000) -> list[tuple[Any, ...]]:
    """Events with ``seq > after``: ``(seq, ce_id, type, track, time, body)``, in order."""
    return conn.execute(
        "SELECT seq, ce_id, type, track, time, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()


def count_events(conn: sqlite3.Connection) -> int:
    """How many events the log holds."""
    return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def get_state(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    """A persisted value of the monitor (window boundaries, last trigger)."""
    row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_state(conn: sqlite3.Connection, items: Iterable[tuple[str, str]]) -> None:
    """Persist monitor values in one transaction."""
    with conn:
        write_state(conn, items)


def write_state(conn: sqlite3.Connection, items: Iterable[tuple[str, str]]) -> None:
    """Persist monitor values within the caller's transaction."""
    conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", list(items))


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Append ``(ce_id, type, track, time, received, body)`` rows, within the caller's transaction."""
    conn.executemany(
        "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, ?, ?, ?, ?, ?)", rows
    )
