"""Rolling model quality from delayed labels: precision and recall at the alert budget, PR-AUC."""

from __future__ import annotations

import math
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
    caught: int = 0


def reviewed(n: int, budget: float) -> int:
    """How many of ``n`` predictions the fraud team reviews at ``budget`` (at least one)."""
    return max(1, round(budget * n))


def at_budget(scores: np.ndarray, labels: np.ndarray, budget: float) -> tuple[float, float]:
    """Precision and recall when the top ``budget`` share of scores is reviewed."""
    k = reviewed(len(scores), budget)
    top = np.argsort(-scores, kind="stable")[:k]
    caught = labels[top].sum()
    return float(caught / k), float(caught / labels.sum()) if labels.sum() else float("nan")


def rolling_quality(
    conn: sqlite3.Connection,
    track: str,
    window: int,
    budget: float,
    maturity_s: float,
    version: str | None = None,
) -> Quality | None:
    """Quality over the newest ``window`` labelled predictions of ``track`` (of model ``version``, if given).

    A prediction counts as labelled when it is older than the newest label time minus ``maturity_s``;
    without a fraud label it is a negative (chargebacks only ever arrive for fraud). None without labels or
    with fewer than 50 labelled predictions.
    """
    row = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()
    if not row or row[0] is None:
        return None
    rows = conn.execute(
        "SELECT p.score, COALESCE(l.is_fraud, 0) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        "WHERE p.track = ? AND p.time <= ? AND (? IS NULL OR p.version = ?) ORDER BY p.time DESC LIMIT ?",
        (track, float(row[0]) - maturity_s, version, version, window),
    ).fetchall()
    if len(rows) < 50:
        return None
    data = np.asarray(rows, dtype=np.float64)
    scores, labels = data[:, 0], data[:, 1]
    positives = int(labels.sum())
    if positives == 0:
        return Quality(len(rows), 0, 0.0, float("nan"), float("nan"))
    precision, recall = at_budget(scores, labels, budget)
    auc = float(average_precision_score(labels, scores))
    return Quality(len(rows), positives, precision, recall, auc, caught_at_budget(scores, labels, budget))


def recent_versions(conn: sqlite3.Connection, track: str, window: int) -> list[str]:
    """Model versions among the newest ``window`` predictions of ``track``."""
    rows = conn.execute(
        "SELECT DISTINCT version FROM (SELECT version FROM predictions WHERE track = ? "
        "ORDER BY time DESC LIMIT ?) WHERE version IS NOT NULL",
        (track, window),
    ).fetchall()
    return sorted(r[0] for r in rows)


# -- the quality-drop rule ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """Recall at the alert budget the rolling quality is compared with.

    ``caught`` of ``positives`` frauds were in the reviewed top ``budget`` share; ``dispersion`` (>= 1)
    inflates the binomial variance for frauds that come in episodes (consecutive frauds are caught or
    missed together), measured on the baseline's own time-ordered chunks; ``source`` says where it came
    from (``reference``: the champion's reference sample with labels, ``labels``: the first labelled
    window after a (re)load).
    """

    caught: int
    positives: int
    dispersion: float = 1.0
    source: str = "reference"

    @property
    def recall(self) -> float:
        """The baseline's recall at budget."""
        return self.caught / self.positives


def caught_at_budget(scores: np.ndarray, labels: np.ndarray, budget: float) -> int:
    """Frauds among the top ``budget`` share of ``scores`` (the transactions the fraud team reviews)."""
    k = reviewed(len(scores), budget)
    return int(labels[np.argsort(-scores, kind="stable")[:k]].sum())


def recall_dispersion(scores: np.ndarray, labels: np.ndarray, budget: float, chunk: int = 1000) -> float:
    """Pearson overdispersion of caught frauds across consecutive ``chunk``-sized pieces (at least 1).

    Each piece is reviewed at the same budget; under a binomial model the caught counts vary as
    ``positives * r * (1 - r)``; episodes of fraud make them vary more, and the test's variance is scaled
    by the ratio (quasi-binomial). 1 when there are fewer than 5 pieces with frauds.
    """
    pieces = [
        (
            caught_at_budget(scores[i : i + chunk], labels[i : i + chunk], budget),
            int(labels[i : i + chunk].sum()),
        )
        for i in range(0, len(scores) - chunk + 1, chunk)
    ]
    pieces = [(c, p) for c, p in pieces if p > 0]
    caught, positives = sum(c for c, _ in pieces), sum(p for _, p in pieces)
    if len(pieces) < 5 or caught in (0, positives):
        return 1.0
    r = caught / positives
    chi2 = sum((c - p * r) ** 2 / (p * r * (1 - r)) for c, p in pieces)
    return max(1.0, chi2 / (len(pieces) - 1))


def baseline_from(scores: np.ndarray, labels: np.ndarray, budget: float, source: str) -> Baseline | None:
    """The baseline of a labelled sample in time order (None without frauds)."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        return None
    caught = caught_at_budget(scores, labels, budget)
    return Baseline(caught, positives, recall_dispersion(scores, labels, budget), source)


def recall_drop_p_value(caught: int, positives: int, baseline: Baseline, ratio: float) -> float:
    """One-sided p-value that the current recall at budget is below ``ratio`` x the baseline's.

    H0: recall >= ratio * baseline recall (a drop within the tolerated margin, or none). Two independent
    binomial proportions (caught of ``positives`` frauds now, ``baseline.caught`` of
    ``baseline.positives`` then) compared with a z-test on ``ratio * r_base - r_now``: the variance counts
    the sampling noise of both, at the H0 boundary for the current one, scaled by the baseline's
    overdispersion. Small p: the window catches significantly fewer frauds than the margin allows.
    """
    if positives <= 0 or baseline.positives <= 0:
        return 1.0
    half = 0.5 / baseline.positives  # keeps the variance positive when the baseline caught none or all
    r_base = min(max(baseline.recall, half), 1 - half)
    r_null = ratio * r_base
    variance = baseline.dispersion * (
        r_null * (1 - r_null) / positives + ratio**2 * r_base * (1 - r_base) / baseline.positives
    )
    z = (r_null - caught / positives) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))
