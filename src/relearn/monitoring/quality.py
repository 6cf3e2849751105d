"""Rolling model quality from delayed labels: precision and recall at the alert budget, PR-AUC."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score


@dataclass(frozen=True)
class Quality:
    """Quality of the last ``n`` matured predictions of a track."""

    n: int
    positives: int
    precision: float
    recall: float
    pr_auc: float


def at_budget(scores: np.ndarray, labels: np.ndarray, budget: float) -> tuple[float, float]:
    """Precision and recall when the top ``budget`` share of scores is reviewed."""
    k = max(1, round(budget * len(scores)))
    top = np.argsort(-scores, kind="stable")[:k]
    caught = labels[top].sum()
    return float(caught / k), float(caught / labels.sum()) if labels.sum() else float("nan")


def rolling_quality(
    conn: sqlite3.Connection, track: str, window: int, budget: float, maturity_s: float
) -> Quality | None:
    """Quality over the newest ``window`` predictions of ``track`` old enough to be labelled.

    A prediction counts as labelled when it is older than the newest label time minus ``maturity_s``;
    without a fraud label it is a negative (chargebacks only ever arrive for fraud).
    """
    row = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()
    if not row or row[0] is None:
        return None
    rows = conn.execute(
        "SELECT p.score, COALESCE(l.is_fraud, 0) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        "WHERE p.track = ? AND p.time <= ? ORDER BY p.time DESC LIMIT ?",
        (track, float(row[0]) - maturity_s, window),
    ).fetchall()
    if len(rows) < 50:
        return None
    data = np.asarray(rows, dtype=np.float64)
    scores, labels = data[:, 0], data[:, 1]
    positives = int(labels.sum())
    if positives == 0:
        return Quality(len(rows), 0, 0.0, float("nan"), float("nan"))
    precision, recall = at_budget(scores, labels, budget)
    return Quality(len(rows), positives, precision, recall, float(average_precision_score(labels, scores)))
