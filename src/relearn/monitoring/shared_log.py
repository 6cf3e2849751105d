"""Several detector replicas: ingest replicas append to PostgreSQL, the one monitor relays into its log.

One detector process takes ~15 k events/s (batched mode); a busy model logs more. The ingest path is the
part that scales out: ``--role ingest`` replicas are stateless sinks that append each acknowledged event to
one shared table in PostgreSQL (the chart's, MLflow's server) under their own *shard* (a name per process
start) and a sequence number of their own. One writer thread per shard commits in order, so within a shard
the committed sequence numbers only grow and a reader never skips one that commits later.

The monitor (``--role all``, one replica: the windows, the label join, the alerts and the endpoints) runs a
:class:`Relay`: it copies the shared rows into its own SQLite log and records, in the same SQLite
transaction, the last sequence number taken from each shard; only then does it delete them from
PostgreSQL. A crash between the two steps re-reads rows the cursor already covers and skips them, so every
event reaches the monitor exactly once, and every drift window is cut in one place, from one ordered log.
An advisory lock makes a second monitor (a rolling update gone wrong) wait instead of relaying twice.

A request and its response may reach two replicas (KServe's logger posts them separately); the relay orders
the rows by the time they were received, and the monitor holds a response that comes before its request.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
import uuid
from typing import Any

from relearn.monitoring.payloads import Event
from relearn.monitoring.store import GroupCommitLog, LogWriteError, get_state, insert_events, write_state

log = logging.getLogger(__name__)

TABLE = "relearn_inference_events"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    shard TEXT NOT NULL, seq BIGINT NOT NULL, ce_id TEXT NOT NULL, type TEXT NOT NULL, track TEXT NOT NULL,
    time TEXT NOT NULL, received DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL, PRIMARY KEY (shard, seq));
CREATE INDEX IF NOT EXISTS {TABLE}_received ON {TABLE} (received);
"""
RELAY_LOCK = 0x72656C6561726E  # "relearn": the advisory lock key of the one relaying monitor
CURSOR = "relay.cursor."  # + shard: the monitor's state key of the last sequence number relayed


def new_shard() -> str:
    """This process's shard: the pod's name (``HOSTNAME``) and a random suffix, new at every start.

    A restarted replica starts a new shard at sequence 1, so its rows can never fall under the cursor of
    its previous life (whose rows the relay may already have deleted).
    """
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def pg_connect(url: str) -> Any:
    """A psycopg2 connection (libpq URL; the password may come from ``PGPASSWORD``), schema created."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5, application_name="relearn-drift-detector")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (RELAY_LOCK + 1,))  # one CREATE at a time
        cur.execute(SCHEMA)
    return conn


class SharedLogFull(LogWriteError):
    """The shared log holds ``max_backlog`` events: the monitor is not relaying (down, or behind)."""


class SharedEventLog(GroupCommitLog):
    """An ingest replica's log: each group commit is one INSERT into the shared table under this shard.

    The table is bounded: past ``max_backlog`` unrelayed events (PostgreSQL's live-row estimate, read at
    most once a second, so the bound holds within a second of load) batches are refused, which the sink
    answers with 503 and the payload logger counts as dropped (or retries, in block mode).
    """

    def __init__(
        self,
        url: str,
        shard: str = "",
        wait_ms: float = 2.0,
        max_batch: int = 2000,
        max_backlog: int = 2_000_000,
        backlog_gauge: Any = None,
    ) -> None:
        super().__init__(wait_ms, max_batch)
        self.url = url
        self.shard = shard or new_shard()
        self.max_backlog = max_backlog
        self._gauge = backlog_gauge
        self._backlog, self._checked = 0, 0.0
        self._seq = 0
        self._last = 0.0  # received times only grow within a shard, even if the clock steps back
        self._conn: Any = pg_connect(url)  # fail at start, not at the first event
        self.start()

    def _check_backlog(self, cur: Any, adding: int) -> None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            cur.execute("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = %s", (TABLE,))
            row = cur.fetchone()
            self._backlog, self._checked = int(row[0]) if row else 0, now
            if self._gauge is not None:
                self._gauge.set(self._backlog)
        if self._backlog + adding > self.max_backlog:
            raise SharedLogFull(
                f"shared log full: ~{self._backlog} events wait for the monitor's relay "
                f"(shared_log_max_events {self.max_backlog}); is the monitor (role all) running?"
            )
        self._backlog += adding  # until the next estimate

    def _write(self, events: list[Event], now: float) -> None:
        from psycopg2.extras import execute_values

        if self._conn.closed:  # the last batch failed
            self._conn = pg_connect(self.url)
        now = self._last = max(now, self._last)
        rows = []
        for event in events:
            self._seq += 1  # a failed commit leaves a gap, which the relay does not mind
            rows.append(
                (self.shard, self._seq, event.ce_id, event.type, event.track, event.time, now, event.body)
            )
        try:
            with self._conn, self._conn.cursor() as cur:
                self._check_backlog(cur, len(events))
                execute_values(
                    cur,
                    f"INSERT INTO {TABLE} (shard, seq, ce_id, type, track, time, received, body) VALUES %s",
                    rows,
                    page_size=len(rows),
                )
        except SharedLogFull:
            raise  # the connection is fine: the monitor has to catch up
        except Exception:
            self._conn.close()  # reconnect on the next batch
            raise

    def _close_store(self) -> None:
        self._conn.close()


class Relay:
    """The monitor's copy of the shared table into its SQLite log: exactly once, in received order."""

    def __init__(self, url: str, local: sqlite3.Connection, batch: int = 5000, metrics: Any = None) -> None:
        self.url = url
        self.local = local
        self.batch = batch
        self.metrics = metrics
        self.leader = False
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = pg_connect(self.url)
            self._conn.autocommit = True
            with self._conn.cursor() as cur:  # session lock: held while this connection lives
                cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
                self.leader = bool(cur.fetchone()[0])
            self._conn.autocommit = False
            if not self.leader:
                log.warning("another monitor holds the relay lock: not relaying")
        return self._conn

    def step(self) -> int:
        """Relay the next rows; how many events reached the local log (0: nothing new, or not the leader)."""
        try:
            return self._step()
        except Exception:
            if self._conn is not None:
                self._conn.close()
            self._conn, self.leader = None, False
            raise
        finally:
            if self.metrics is not None:
                self.metrics.relay_leader.set(1 if self.leader else 0)

    def _step(self) -> int:
        conn = self._connection()
        if not self.leader:
            conn.close()  # try again at the next step
            return 0
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT shard, seq, ce_id, type, track, time, received, body FROM {TABLE} "
                "ORDER BY received, shard, seq LIMIT %s",
                (self.batch,),
            )
            rows = cur.fetchall()
        if not rows:
            return 0
        cursors: dict[str, int] = {}
        fresh = []
        for shard, seq, ce_id, kind, track, when, received, body in rows:
            if shard not in cursors:
                cursors[shard] = int(get_state(self.local, CURSOR + shard, "0") or 0)
            if seq <= cursors[shard]:
                continue  # relayed before a crash, not yet deleted
            cursors[shard] = max(cursors[shard], seq)
            fresh.append((ce_id, kind, track, when, received, bytes(body)))
        with self.local:  # the events and the cursors in one transaction: exactly once
            insert_events(self.local, fresh)
            write_state(self.local, [(CURSOR + shard, str(seq)) for shard, seq in cursors.items()])
        with conn, conn.cursor() as cur:
            for shard, seq in cursors.items():
                cur.execute(f"DELETE FROM {TABLE} WHERE shard = %s AND seq <= %s", (shard, seq))
        if self.metrics is not None:
            self.metrics.relayed.inc(len(fresh))
            self.metrics.relay_lag.set(max(0.0, time.time() - rows[-1][6]))
        return len(fresh)

    def close(self) -> None:
        """Close the PostgreSQL session (which releases the relay lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
