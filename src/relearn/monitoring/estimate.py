"""Performance before labels: precision and recall at the alert budget estimated from the scores alone.

Chargebacks take weeks; until then nobody knows how well a model does. Confidence-based performance
estimation (NannyML's CBPE) fills the gap: if a score ``p`` is a calibrated probability of fraud, a reviewed
transaction is a fraud with probability ``p``, so the expected frauds caught in the reviewed top
``alert_budget`` share is the sum of its ``p`` and the expected frauds overall the sum of all ``p``. The
estimate is :func:`relearn.monitoring.quality.at_budget` with those probabilities in place of the labels
(one definition of the budget cut).

It holds while ``P(fraud | score)`` does: under covariate shift with a calibrated model it tracks the
realized value; under concept drift or prior (label) shift the scores' meaning changes and it does not (the
realized value, when labels mature, is the check). The model's scores are only close to calibrated (the
train step removes the positive-weight shift from the output bias), so they are recalibrated first: an
isotonic map fitted on the reference sample's scores and labels, when it has both.

Own small implementation rather than ``nannyml``: NannyML's CBPE estimates metrics at a fixed decision
threshold per chunk, not at a rank-based review budget, and it would pull a second dataframe stack into the
detector's image for a sum of probabilities.
"""

from __future__ import annotations

import math
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relearn.monitoring.quality import at_budget

MIN_CALIBRATION_POSITIVES = 20  # fewer frauds in the reference: an isotonic fit would be mostly noise
PENDING_WINDOWS = 200  # closed windows kept (ids and scores) until their labels mature
ID_CHUNK = 900  # SQLite host parameters per query

Calibrate = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """Expected precision and recall at the budget of ``n`` scored predictions."""

    n: int
    precision: float
    recall: float
    expected_frauds: float


def fit_calibrator(scores: np.ndarray, labels: np.ndarray) -> Calibrate:
    """Isotonic map from the reference's scores to fraud probabilities (identity with too few frauds).

    Monotone, so the ranking (and the budget cut) is unchanged up to ties; clipped outside the reference's
    score range.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    known = np.isfinite(scores) & np.isfinite(labels)
    if labels[known].sum() < MIN_CALIBRATION_POSITIVES:
        return identity
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores[known], labels[known])
    return lambda s: iso.predict(np.asarray(s, dtype=np.float64))


def identity(scores: np.ndarray) -> np.ndarray:
    """The scores as probabilities (no labelled reference to recalibrate on), clipped to [0, 1]."""
    return np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)


def estimate_at_budget(scores: np.ndarray, budget: float, calibrate: Calibrate = identity) -> Estimate:
    """Expected precision and recall when the top ``budget`` share of ``scores`` is reviewed.

    Ranked by the raw scores (what the fraud team reviews); the calibrated probabilities stand in for
    the labels. Recall is the ratio of expectations (caught / all frauds), as in CBPE.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        return Estimate(0, math.nan, math.nan, 0.0)
    p = calibrate(scores)
    expected = float(p.sum())
    if expected <= 0:
        return Estimate(len(scores), 0.0, math.nan, 0.0)
    precision, recall = at_budget(scores, p, budget)  # ranked by the raw scores, as reviewed
    return Estimate(len(scores), precision, recall, expected)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


@dataclass
class _Pending:
    record: dict[str, Any]  # the window's entry in the monitor's results: gets ``realized``
    by_version: dict[str, tuple[list[str], np.ndarray]]


@dataclass
class WindowEstimates:
    """Estimates of each closed window per model version, and their realized values once labels mature.

    ``close`` is called once per closed window: it exports ``relearn_drift_estimated_{precision,recall}_
    at_budget{track,model_version}``, adds ``estimate`` to the window's record, and adds ``realized`` to
    the records of earlier windows whose predictions all have mature labels (the pairs ``/status`` shows).
    """

    budget: float
    maturity_s: float
    pending: deque[_Pending] = field(default_factory=lambda: deque(maxlen=PENDING_WINDOWS))
    exported: set[tuple[str, str]] = field(default_factory=set)
    _reference: Any = None
    _calibrate: Calibrate = identity

    def calibrator(self, reference: Any) -> Calibrate:
        """The calibration of the loaded reference (refitted when the reference object changes)."""
        if reference is not self._reference:
            from relearn.monitoring.detector import LABEL, SCORE

            self._reference, self._calibrate = reference, identity
            if reference is not None and LABEL in reference and SCORE in reference:
                self._calibrate = fit_calibrator(
                    reference[SCORE].to_numpy(np.float64), reference[LABEL].to_numpy(np.float64)
                )
        return self._calibrate

    def close(
        self,
        conn: sqlite3.Connection,
        metrics: Any,
        reference: Any,
        track: str,
        record: dict[str, Any],
        scores: np.ndarray,
        versions: Sequence[str | None],
        ids: Sequence[str | None],
    ) -> None:
        """Estimate the closed window of ``track`` per version; realize the matured earlier windows."""
        calibrate = self.calibrator(reference)
        groups: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version or "unknown", []).append(i)
        estimates, by_version = {}, {}
        for version, rows in groups.items():
            e = estimate_at_budget(scores[rows], self.budget, calibrate)
            estimates[version] = {"n": e.n, "precision": _finite(e.precision), "recall": _finite(e.recall)}
            metrics.estimated_precision.labels(track, version).set(e.precision)
            metrics.estimated_recall.labels(track, version).set(e.recall)
            by_version[version] = ([ids[i] for i in rows if ids[i]], scores[[i for i in rows if ids[i]]])
        for key in {k for k in self.exported if k[0] == track} - {(track, v) for v in groups}:
            metrics.estimated_precision.remove(*key)  # the version left the track: keep labels bounded
            metrics.estimated_recall.remove(*key)
        self.exported = {k for k in self.exported if k[0] != track} | {(track, v) for v in groups}
        record["estimate"] = estimates
        self.realize(conn)
        self.pending.append(_Pending(record, by_version))

    def realize(self, conn: sqlite3.Connection) -> None:
        """Add ``realized`` to the oldest pending windows whose newest prediction has mature labels."""
        row = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()
        if not row or row[0] is None:
            return
        mature = float(row[0]) - self.maturity_s
        while self.pending:
            realized = {}
            for version, (ids, scores) in self.pending[0].by_version.items():
                if not ids:  # predictions without transaction ids: no labels will join
                    continue
                times, frauds = _labels(conn, ids)
                if times and max(times) > mature:
                    return  # windows close in time order: the later ones are not mature either
                labels = np.array([frauds.get(i, 0) for i in ids], dtype=np.float64)
                precision, recall = at_budget(scores, labels, self.budget)
                realized[version] = {"frauds": int(labels.sum()), "precision": _finite(precision)}
                realized[version]["recall"] = _finite(recall)
            self.pending.popleft().record["realized"] = realized


def _labels(conn: sqlite3.Connection, ids: list[str]) -> tuple[list[float], dict[str, int]]:
    """The stored prediction times of ``ids`` and their fraud labels (absent: no chargeback yet)."""
    times, frauds = [], {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT time FROM predictions WHERE transaction_id IN ({marks})"
        times += [t for (t,) in conn.execute(query, chunk)]
        query = f"SELECT transaction_id, is_fraud FROM labels WHERE transaction_id IN ({marks})"
        frauds.update(conn.execute(query, chunk))
    return times, frauds
