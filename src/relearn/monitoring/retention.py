"""Retention of the inference log: events by age and by size, predictions and labels by age.

The log would otherwise grow until the detector's volume is full. A periodic job deletes

- events received longer than ``max_age_s`` ago, then the oldest events while the log's used pages exceed
  ``max_bytes`` (SQLite reuses freed pages, so the file stops growing at about that size; it never
  shrinks on its own, and a shrink would need an exclusive VACUUM of the whole log);
- predictions and labels older than ``predictions_max_age_s``: they are small, and a chargeback may join
  its prediction months later (card schemes allow 120 days), so they are kept longer than the bodies.

It never deletes what the monitor has not read: events from the oldest window's start, less the requests
the monitor re-reads on a restart to pair them (``lookback``), are kept whatever their age or size; a log
that cannot be trimmed for that reason is counted (``reason="unread"``) and logged.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from relearn.monitoring import store
from relearn.monitoring.jobs import PeriodicJob

log = logging.getLogger(__name__)
CHUNK = 5000  # events per DELETE: short write transactions, so ingest is never blocked for long


@dataclass(frozen=True)
class Policy:
    """How much of the log is kept."""

    max_age_s: float
    max_bytes: int
    predictions_max_age_s: float
    lookback: int


class RetentionMetrics:
    """``relearn_drift_log_*``: the log's size and what retention deleted, by table and reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Gauge("relearn_drift_log_bytes", "Used bytes of the inference log.", registry=registry)
        self.events = Gauge("relearn_drift_log_events", "Events the inference log holds.", registry=registry)
        self.deleted = Counter(
            "relearn_drift_log_deleted_rows",
            "Rows retention deleted (reason: age, size).",
            ["table", "reason"],
            registry=registry,
        )
        self.blocked = Counter(
            "relearn_drift_log_retention_blocked",
            "Retention runs that could not trim the log because the monitor had not read it.",
            registry=registry,
        )


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (free pages excluded: SQLite reuses them)."""
    pragma = lambda name: int(conn.execute(f"PRAGMA {name}").fetchone()[0])  # noqa: E731
    return (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")


def unread_floor(conn: sqlite3.Connection, lookback: int) -> int:
    """The lowest event ``seq`` retention must keep: the oldest window's start, less ``lookback``."""
    starts = [int(v) for (v,) in conn.execute("SELECT value FROM state WHERE key LIKE 'window_start:%'")]
    return max(0, min(starts, default=0) - lookback)


def _delete(conn: sqlite3.Connection, sql: str, args: tuple) -> int:
    with conn:
        return conn.execute(sql, args).rowcount


def enforce(conn: sqlite3.Connection, policy: Policy, now: float | None = None) -> dict[tuple[str, str], int]:
    """Apply ``policy`` once.

    Returns:
        Rows deleted per (table, reason); ``("events", "unread")``: 1 when the log was over its size but
        only events the monitor has not read were left.
    """
    now = time.time() if now is None else now
    floor = unread_floor(conn, policy.lookback)
    out: dict[tuple[str, str], int] = {}
    cutoff = now - policy.max_age_s
    while n := _delete(
        conn,
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ? AND received < ? LIMIT ?)",
        (floor, cutoff, CHUNK),
    ):
        out["events", "age"] = out.get(("events", "age"), 0) + n
    old = now - policy.predictions_max_age_s
    out["predictions", "age"] = _delete(conn, "DELETE FROM predictions WHERE time < ?", (old,))
    out["labels", "age"] = _delete(conn, "DELETE FROM labels WHERE received < ?", (old,))
    while (used := used_bytes(conn)) > policy.max_bytes:
        # Down to 90 % of the limit (not a pass per event at the edge), in chunks by the mean event size.
        per_event = used / max(1, store.count_events(conn))
        n = _delete(
            conn,
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ? ORDER BY seq LIMIT ?)",
            (floor, min(CHUNK, max(1, math.ceil((used - 0.9 * policy.max_bytes) / per_event)))),
        )
        if not n:
            out["events", "unread"] = 1
            break
        out["events", "size"] = out.get(("events", "size"), 0) + n
    return {k: v for k, v in out.items() if v}


class RetentionJob(PeriodicJob):
    """Runs :func:`enforce` every ``interval_s`` in a daemon thread and exports the log's size."""

    errors = (sqlite3.Error,)  # a busy log: the next pass tries again

    def __init__(self, path: Path, policy: Policy, interval_s: float, metrics: RetentionMetrics) -> None:
        super().__init__("log-retention", interval_s)
        self.path, self.policy, self.metrics = path, policy, metrics

    def run_once(self) -> dict[tuple[str, str], int]:
        """One pass: enforce the policy, update the metrics (nothing before the log exists)."""
        if not self.path.is_file():
            return {}
        conn = store.connect(self.path)
        try:
            deleted = enforce(conn, self.policy)
            for (table, reason), n in deleted.items():
                if reason == "unread":
                    self.metrics.blocked.inc()
                    log.warning("inference log over its size limit, but the rest is unread by the monitor")
                else:
                    self.metrics.deleted.labels(table, reason).inc(n)
            self.metrics.bytes.set(used_bytes(conn))
            self.metrics.events.set(store.count_events(conn))
            return deleted
        finally:
            conn.close()
