"""What the inference log served and which of it has matured labels: the rows a canary's backtest scores.

Read by :class:`relearn.rollout.backtest.Backtest` and :mod:`relearn.model.recalibrate` from the log file
(:class:`LogFile`, local mode) or through the drift detector's ``GET /v1/backtest/labels`` and
``GET /v1/backtest/inputs`` (:class:`DetectorRows`, a cluster, where the log sits on the detector's
ReadWriteOnce volume). Both paths call these functions, so they return the same rows. :func:`rewards` is a
bandit's reward history, served as ``GET /v1/experiments/rewards`` to its update CronJob.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from relearn.events import REQUEST_TYPE
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.payloads import ID_FIELD, Rejected, request_features

LIVE_TRACKS = ("stable", "canary")  # the shadow's mirrored requests are the same transactions again
PAGE = 5000
REWARDS_PAGE = 50_000  # four numbers a row


def labelled(conn: sqlite3.Connection, since: float, maturity_s: float, limit: int) -> dict[str, int]:
    """Labels (0/1 by transaction id) of the newest ``limit`` matured live predictions after ``since``.

    Matured: served before the newest chargeback minus ``maturity_s``; without a chargeback by then a
    prediction counts as a legitimate transaction. Newest first.
    """
    newest = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()[0]
    if newest is None:
        return {}
    rows = conn.execute(
        "SELECT p.transaction_id, MAX(COALESCE(l.is_fraud, 0)) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        f"WHERE p.track IN ({','.join('?' * len(LIVE_TRACKS))}) AND p.time > ? AND p.time <= ? "
        "GROUP BY p.transaction_id ORDER BY MAX(p.time) DESC LIMIT ?",
        (*LIVE_TRACKS, since, newest - maturity_s, limit),
    ).fetchall()
    return {str(tid): int(fraud) for tid, fraud in rows}


def served_inputs(
    conn: sqlite3.Connection, since: float, after: int, limit: int = PAGE
) -> tuple[dict[str, dict[str, Any]], int, bool]:
    """The model inputs of live requests logged after sequence ``after`` (and received since ``since``).

    Only requests that carry every model input count (the predictor logs what it scored; a transformer's
    raw request does not); rows with a non-finite number are left out (no model scores them alike).

    Returns:
        Inputs keyed as the detector keys its predictions (transaction id, else the CloudEvent id), the
        sequence number to continue after, and whether more rows may follow.
    """
    rows = conn.execute(
        "SELECT seq, ce_id, body FROM events WHERE seq > ? AND type = ? AND received >= ? "
        f"AND track IN ({','.join('?' * len(LIVE_TRACKS))}) ORDER BY seq LIMIT ?",
        (after, REQUEST_TYPE, since, *LIVE_TRACKS, limit),
    ).fetchall()
    inputs: dict[str, dict[str, Any]] = {}
    for seq, ce_id, body in rows:
        after = seq
        try:
            parsed = request_features(bytes(body))
        except Rejected:
            continue
        for i, row in enumerate(parsed):
            if not all(name in row for name in MODEL_INPUTS):
                break
            key = row.pop(ID_FIELD, None) or (ce_id if len(parsed) == 1 else f"{ce_id}/{i}")
            values = {name: row[name] for name in MODEL_INPUTS}
            if all(not isinstance(v, float) or math.isfinite(v) for v in values.values()):
                inputs[str(key)] = values
    return inputs, after, len(rows) == limit


def rewards(
    conn: sqlite3.Connection, since: float, after: int, limit: int = REWARDS_PAGE
) -> tuple[list[list[Any]], int, bool]:
    """A bandit's reward history: live predictions scored since ``since``, after log row ``after``.

    Each row is ``[model version, score, time, label]`` (label 1 when the chargeback came in), in the
    order the detector stored them; rows without a model version are left out (no arm to credit).

    Returns:
        The rows, the row to continue after, and whether more rows may follow.
    """
    rows = conn.execute(
        "SELECT p.rowid, p.version, p.score, p.time, COALESCE(l.is_fraud, 0) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        "WHERE p.rowid > ? AND p.time >= ? AND p.version IS NOT NULL "
        f"AND p.track IN ({','.join('?' * len(LIVE_TRACKS))}) ORDER BY p.rowid LIMIT ?",
        (after, since, *LIVE_TRACKS, limit),
    ).fetchall()
    out = [[str(version), float(score), float(t), int(label)] for _, version, score, t, label in rows]
    return out, (rows[-1][0] if rows else after), len(rows) == limit


def open_read_only(path: Path | str) -> sqlite3.Connection:
    """The log at ``path``, read-only (the detector keeps writing it)."""
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)


class ServedRows(Protocol):
    """Where a backtest or a recalibration reads the log: :class:`LogFile` or :class:`DetectorRows`."""

    def labels(self, since: float, maturity_s: float, limit: int) -> dict[str, int]:
        """:func:`relearn.monitoring.labelled`."""
        ...

    def inputs(self, since: float, after: int) -> tuple[dict[str, dict[str, Any]], int, bool]:
        """:func:`relearn.monitoring.served_inputs` (one page)."""
        ...


class LogFile:
    """The inference log file itself (local mode: the controller runs beside the detector)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def labels(self, since: float, maturity_s: float, limit: int) -> dict[str, int]:  # noqa: D102
        conn = open_read_only(self.path)
        try:
            return labelled(conn, since, maturity_s, limit)
        finally:
            conn.close()

    def inputs(self, since: float, after: int) -> tuple[dict[str, dict[str, Any]], int, bool]:  # noqa: D102
        conn = open_read_only(self.path)
        try:
            return served_inputs(conn, since, after)
        finally:
            conn.close()


class DetectorRows:
    """The same rows through the drift detector's ``GET /v1/backtest/labels|inputs`` (a cluster)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _get(self, what: str, **params: Any) -> dict[str, Any]:
        import httpx

        resp = httpx.get(f"{self.url}/v1/backtest/{what}", params=params, timeout=self.timeout)
        resp.raise_for_status()
        return resp.json()

    def labels(self, since: float, maturity_s: float, limit: int) -> dict[str, int]:  # noqa: D102
        return self._get("labels", since=since, maturity_seconds=maturity_s, limit=limit)["labels"]

    def inputs(self, since: float, after: int) -> tuple[dict[str, dict[str, Any]], int, bool]:  # noqa: D102
        page = self._get("inputs", since=since, after=after)
        return page["inputs"], int(page["after"]), bool(page["more"])
