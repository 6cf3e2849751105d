"""The embedded backend of the streaming state: one SQLite file in WAL mode, shared by local processes.

Each call is one ``BEGIN IMMEDIATE`` transaction, so an add and the read that follows it are atomic with
respect to other processes, and a committed update survives a kill -9 of any of them.
:meth:`SqliteBackend.windows_async` runs a call on the event loop when the database is free (one local
transaction, ~0.1 ms: cheaper than a thread hop) and in a thread when it has to wait for a lock, so the
loop never waits on another process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from relearn.features.state_events import Bounds, Event, MerchantWindow, Mode, UserWindow

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


# A user keeps the newest of its events older than the bound (its last transaction); a merchant keeps none.
_PRUNE_USER = (
    "DELETE FROM user_events WHERE user_id = ?1 AND t < "
    "(SELECT MAX(t) FROM user_events WHERE user_id = ?1 AND t < ?2)"
)
_PRUNE_MERCHANT = "DELETE FROM merchant_events WHERE merchant_id = ? AND t < ?"
_PRUNE_CHARGEBACKS = "DELETE FROM chargebacks WHERE merchant_id = ? AND t < ?"
_ADD_USER = "INSERT OR IGNORE INTO user_events VALUES (?, ?, ?, ?, ?, ?, ?)"
_ADD_MERCHANT = "INSERT OR IGNORE INTO merchant_events VALUES (?, ?, ?, ?)"
# The user's window in time order; its newest event is also the newest in the (longer) horizon.
_USER_WINDOW = (
    "SELECT t, amount, merchant_id, country, device FROM user_events WHERE user_id = ? AND t >= ? AND t < ?"
    " ORDER BY t"
)
_USER_LAST = (
    "SELECT t, country, device FROM user_events WHERE user_id = ? AND t >= ? AND t < ?"
    " ORDER BY t DESC LIMIT 1"
)
# Centred sums of the non-null amounts around the first of them (in time order), summed in SQL.
_MERCHANT_SUMS = """
SELECT COUNT(w.amount), TOTAL(w.amount - c.centre), TOTAL((w.amount - c.centre) * (w.amount - c.centre)),
       c.centre
FROM merchant_events AS w,
     (SELECT amount AS centre FROM merchant_events
      WHERE merchant_id = ?1 AND t >= ?2 AND t < ?3 AND amount IS NOT NULL ORDER BY t LIMIT 1) AS c
WHERE w.merchant_id = ?1 AND w.t >= ?2 AND w.t < ?3
"""
_MERCHANT_COUNTS = """
SELECT (SELECT COUNT(*) FROM merchant_events WHERE merchant_id = ?1 AND t >= ?2 AND t < ?4),
       (SELECT COUNT(*) FROM merchant_events WHERE merchant_id = ?1 AND t >= ?3 AND t < ?4),
       (SELECT COUNT(*) FROM chargebacks WHERE merchant_id = ?1 AND t >= ?3 AND t < ?4)
"""


class SqliteBackend:
    """Raw events in SQLite; see the module docstring."""

    def __init__(self, path: Path, lateness_us: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lateness_us = lateness_us
        self._lock = threading.Lock()  # one connection, used from executor threads
        self.conn = _connect(path, timeout=5)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(_SCHEMA)
        self.path = path
        self._now: sqlite3.Connection | None = None  # the event loop's: never waits for a lock

    def _windows(
        self, conn: sqlite3.Connection, events: list[Event], mode: Mode
    ) -> tuple[list[UserWindow], list[MerchantWindow]]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if mode == "add":
                _add_all(conn, events, self.lateness_us)
                users, merchants = [], []
            else:
                users, merchants = _read(conn, events, mode, self.lateness_us)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return users, merchants

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

    def windows(self, events: list[Event], mode: Mode) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """See :class:`relearn.features.state.Backend`: users and merchants in one transaction."""
        with self._lock:
            return self._windows(self.conn, events, mode)

    async def windows_async(
        self, events: list[Event], mode: Mode
    ) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """See :class:`relearn.features.state.Backend`."""
        if self._lock.acquire(blocking=False):
            try:
                if self._now is None:
                    self._now = _connect(self.path, timeout=0)
                return self._windows(self._now, events, mode)
            except sqlite3.OperationalError as exc:  # busy: rolled back, nothing happened; wait in a thread
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            finally:
                self._lock.release()
        return await asyncio.get_running_loop().run_in_executor(None, self.windows, events, mode)

    def users(self, events: list[Event], mode: Mode) -> list[UserWindow]:
        """See :class:`relearn.features.state.Backend`."""
        out = []
        with self._transaction() as conn:
            for e in events:
                b = Bounds.at(e.time_us, self.lateness_us)
                if mode != "read":
                    _add_user(conn, e, b)
                if mode != "add":
                    out.append(_user_window(conn, e, b))
        return out

    def merchants(self, events: list[Event], mode: Mode) -> list[MerchantWindow]:
        """See :class:`relearn.features.state.Backend`."""
        out = []
        with self._transaction() as conn:
            for e in events:
                b = Bounds.at(e.time_us, self.lateness_us)
                if mode != "read":
                    _add_merchant(conn, e, b)
                if mode != "add":
                    out.append(_merchant_window(conn, e, b))
        return out

    def chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """See :class:`relearn.features.state.Backend`."""
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO chargebacks VALUES (?, ?, ?)", items)
            return conn.total_changes - before

    def close(self) -> None:
        """Close the connections."""
        self.conn.close()
        if self._now is not None:
            self._now.close()


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes, not power loss
    return conn


def _read(
    conn: sqlite3.Connection, events: list[Event], mode: Mode, lateness_us: int
) -> tuple[list[UserWindow], list[MerchantWindow]]:
    users, merchants = [], []
    for e in events:  # in order: an event sees the batch's earlier ones, as sent one by one
        b = Bounds.at(e.time_us, lateness_us)
        if mode == "observe":
            _add_user(conn, e, b)
            _add_merchant(conn, e, b)
        users.append(_user_window(conn, e, b))
        merchants.append(_merchant_window(conn, e, b))
    return users, merchants


def _add_user(conn: sqlite3.Connection, e: Event, b: Bounds) -> None:
    conn.execute(_ADD_USER, (e.user_id, e.transaction_id, e.time_us, e.amount, e.merchant_id, *e.place))
    conn.execute(_PRUNE_USER, (e.user_id, b.prune_user))


def _add_merchant(conn: sqlite3.Connection, e: Event, b: Bounds) -> None:
    conn.execute(_ADD_MERCHANT, (e.merchant_id, e.transaction_id, e.time_us, e.amount))
    conn.execute(_PRUNE_MERCHANT, (e.merchant_id, b.prune_merchant))
    conn.execute(_PRUNE_CHARGEBACKS, (e.merchant_id, b.prune_merchant))


def _add_all(conn: sqlite3.Connection, events: list[Event], lateness_us: int) -> None:
    """Store a batch (bootstrap): one insert per table, then each entity pruned once at its latest bound.

    Pruning at the latest bound only is what pruning after each event ends with: the bound only moves on.
    """
    users = [(e.user_id, e.transaction_id, e.time_us, e.amount, e.merchant_id, *e.place) for e in events]
    conn.executemany(_ADD_USER, users)
    conn.executemany(_ADD_MERCHANT, [(e.merchant_id, e.transaction_id, e.time_us, e.amount) for e in events])
    latest_user: dict[str, int] = {}
    latest_merchant: dict[str, int] = {}
    for e in events:
        latest_user[e.user_id] = max(latest_user.get(e.user_id, e.time_us), e.time_us)
        latest_merchant[e.merchant_id] = max(latest_merchant.get(e.merchant_id, e.time_us), e.time_us)
    conn.executemany(_PRUNE_USER, [(u, Bounds.at(t, lateness_us).prune_user) for u, t in latest_user.items()])
    merchants = [(m, Bounds.at(t, lateness_us).prune_merchant) for m, t in latest_merchant.items()]
    conn.executemany(_PRUNE_MERCHANT, merchants)
    conn.executemany(_PRUNE_CHARGEBACKS, merchants)


def _user_window(conn: sqlite3.Connection, e: Event, b: Bounds) -> UserWindow:
    rows = conn.execute(_USER_WINDOW, (e.user_id, b.user_from, b.t)).fetchall()
    if rows:
        last = (rows[-1][0], rows[-1][3], rows[-1][4])
    else:
        last = conn.execute(_USER_LAST, (e.user_id, b.last_from, b.t)).fetchone()
    return UserWindow(
        times=np.array([r[0] for r in rows], dtype=np.int64),
        amounts=np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64),
        merchants=[r[2] for r in rows],
        last=None if last is None else (int(last[0]), last[1] or "", last[2] or ""),
    )


def _merchant_window(conn: sqlite3.Connection, e: Event, b: Bounds) -> MerchantWindow:
    m = e.merchant_id
    n, s, ss, centre = conn.execute(_MERCHANT_SUMS, (m, b.merchant_mean_from, b.t)).fetchone()
    counts = conn.execute(_MERCHANT_COUNTS, (m, b.merchant_24h_from, b.merchant_30d_from, b.t)).fetchone()
    return MerchantWindow(
        n=n,
        s=s,
        ss=ss,
        centre=0.0 if centre is None else centre,
        count_24h=counts[0],
        count_30d=counts[1],
        chargebacks_30d=counts[2],
    )
