"""The embedded backend of the streaming state: one SQLite file in WAL mode, shared by local processes.

Each call is one ``BEGIN IMMEDIATE`` transaction, so an add and the read that follows it are atomic with
respect to other processes, and a committed update survives a kill -9 of any of them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from relearn.features.state import Bounds, Event, MerchantWindow, Mode, UserWindow
from relearn.features.windows import centred_sums

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_events (
    user_id TEXT, transaction_id TEXT, t INTEGER, amount REAL, merchant_id TEXT, country TEXT, device TEXT,
    PRIMARY KEY (user_id, transaction_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_events_t ON user_events (user_id, t);
CREATE TABLE IF NOT EXISTS merchant_events (
    merchant_id TEXT, transaction_id TEXT, t INTEGER, amount REAL,
    PRIMARY KEY (merchant_id, transaction_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS merchant_events_t ON merchant_events (merchant_id, t);
CREATE TABLE IF NOT EXISTS chargebacks (
    merchant_id TEXT, transaction_id TEXT, t INTEGER,
    PRIMARY KEY (merchant_id, transaction_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chargebacks_t ON chargebacks (merchant_id, t);
"""


def _prune(conn: sqlite3.Connection, table: str, key: str, entity: str, before: int, keep_last: bool) -> None:
    """Drop an entity's events older than ``before`` (keeping the newest of them for a user's last event)."""
    if keep_last:
        sql = f"SELECT MAX(t) FROM {table} WHERE {key} = ? AND t < ?"
        row = conn.execute(sql, (entity, before)).fetchone()
        if row[0] is None:
            return
        before = row[0]
    conn.execute(f"DELETE FROM {table} WHERE {key} = ? AND t < ?", (entity, before))


class SqliteBackend:
    """Raw events in SQLite; see the module docstring."""

    def __init__(self, path: Path, lateness_us: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lateness_us = lateness_us
        self._lock = threading.Lock()  # one connection, used from executor threads
        self.conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes, not power loss
        self.conn.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def users(self, events: list[Event], mode: Mode) -> list[UserWindow]:
        """See :class:`relearn.features.state.Backend`."""
        out = []
        with self._transaction() as conn:
            for e in events:
                b = Bounds.at(e.time_us, self.lateness_us)
                if mode != "read":
                    conn.execute(
                        "INSERT OR IGNORE INTO user_events VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (e.user_id, e.transaction_id, e.time_us, e.amount, e.merchant_id, *e.place),
                    )
                    _prune(conn, "user_events", "user_id", e.user_id, b.prune_user, keep_last=True)
                    if mode == "add":
                        continue
                rows = conn.execute(
                    "SELECT t, amount, merchant_id FROM user_events WHERE user_id = ? AND t >= ? AND t < ?"
                    " ORDER BY t",
                    (e.user_id, b.user_from, b.t),
                ).fetchall()
                last = conn.execute(
                    "SELECT t, country, device FROM user_events WHERE user_id = ? AND t >= ? AND t < ?"
                    " ORDER BY t DESC LIMIT 1",
                    (e.user_id, b.last_from, b.t),
                ).fetchone()
                out.append(
                    UserWindow(
                        times=np.array([r[0] for r in rows], dtype=np.int64),
                        amounts=np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64),
                        merchants=[r[2] for r in rows],
                        last=None if last is None else (int(last[0]), last[1] or "", last[2] or ""),
                    )
                )
        return out

    def merchants(self, events: list[Event], mode: Mode) -> list[MerchantWindow]:
        """See :class:`relearn.features.state.Backend`."""
        out = []
        with self._transaction() as conn:
            for e in events:
                b = Bounds.at(e.time_us, self.lateness_us)
                m = e.merchant_id
                if mode != "read":
                    conn.execute(
                        "INSERT OR IGNORE INTO merchant_events VALUES (?, ?, ?, ?)",
                        (m, e.transaction_id, e.time_us, e.amount),
                    )
                    _prune(conn, "merchant_events", "merchant_id", m, b.prune_merchant, keep_last=False)
                    _prune(conn, "chargebacks", "merchant_id", m, b.prune_merchant, keep_last=False)
                    if mode == "add":
                        continue
                amounts = conn.execute(
                    "SELECT amount FROM merchant_events WHERE merchant_id = ? AND t >= ? AND t < ?"
                    " ORDER BY t",
                    (m, b.merchant_mean_from, b.t),
                ).fetchall()
                n, s, ss, centre = centred_sums(
                    np.array([np.nan if a is None else a for (a,) in amounts], dtype=np.float64)
                )

                def count(table: str, since: int, m: str = m, t: int = b.t) -> int:
                    sql = f"SELECT COUNT(*) FROM {table} WHERE merchant_id = ? AND t >= ? AND t < ?"
                    return int(conn.execute(sql, (m, since, t)).fetchone()[0])

                out.append(
                    MerchantWindow(
                        n=n,
                        s=s,
                        ss=ss,
                        centre=centre,
                        count_24h=count("merchant_events", b.merchant_24h_from),
                        count_30d=count("merchant_events", b.merchant_30d_from),
                        chargebacks_30d=count("chargebacks", b.merchant_30d_from),
                    )
                )
        return out

    def chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """See :class:`relearn.features.state.Backend`."""
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO chargebacks VALUES (?, ?, ?)", items)
            return conn.total_changes - before

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
