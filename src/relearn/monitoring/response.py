"""The right response to each kind of drift: retrain, recalibrate, or stop and page.

Not every incident calls for retraining (*Designing Machine Learning Systems*, ch. 8-9):

* **data bug** → ``page``: the window's served inputs break what the reference says they can be (a
  categorical input suddenly missing or out of vocabulary on many rows: nulls; a numeric input far outside
  the reference's range on many rows: a units change). Retraining would learn the bug; the incident goes to
  the webhook and nothing is started. Once a track's window failed these checks, every incident of the
  track is a page (a schedule's included: never train on broken data) until the reference changes (a new
  champion) or the detector restarts: a units bug fades from relative inputs as the entity means absorb it,
  while the data stays broken.
* **prior (label) shift** → ``recalibrate``: the scores moved (a drift window where only ``score`` drifted)
  or the labels show a quality drop, while no input of the verdict drifted in the track's last
  ``RECENT_WINDOWS`` windows, and the labels show the model still ranks as well as it did: the one-sided
  95 % lower bound of the rolling ROC-AUC (which the fraud rate does not move; Hanley-McNeil standard
  error) is within ``AUC_MARGIN`` of the ROC-AUC of the first predictions of the version the track serves.
  The ranking is good; the threshold is re-fitted to the alert budget (:mod:`relearn.model.recalibrate`).
  Scores moving alone cannot tell a prior shift from concept drift (the demo's ``concept_drift`` moves
  the scores and no verdict input): without labels showing the ranking held, the response is to retrain.
* **covariate drift** → ``retrain`` with ``train_mode=auto``: inputs drifted, the task did not (as far as
  the inputs tell). The champion's knowledge still holds, so the retraining fine-tunes it on the new window
  (:mod:`relearn.model.warm`; from scratch when it cannot, saying why). On the generator's covariate
  shift (``benchmarks.drift_response``, 3 seeds x 2 retraining days), a fine-tuned champion scored recall
  at budget -0.003 to +0.075 against the champion on the next two weeks; a model trained from scratch on the
  same 10-day window lost to it every time (-0.014 to -0.057).
* **concept drift** → ``retrain`` with ``train_mode=scratch``: the ranking degraded or is not shown to hold
  (new fraud the model scores low): the mapping changed, start over on the recent window. Schedule and
  volume triggers retrain with the pipeline's own default mode.

Each decision is written into the incident (``response``, ``why``): the webhook's CloudEvent, the audit.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from relearn.features.spec import CATEGORICAL_INPUTS

RESPONSES = ("retrain", "recalibrate", "page")
COVARIATE_MODE, CONCEPT_MODE = "auto", "scratch"  # a retrain incident's train_mode (relearn.model.warm)
RECENT_WINDOWS = 3  # windows of a track whose evidence an incident is judged on
# A categorical input missing / out of vocabulary on this much more of the window (and 3 rows at least): a
# bug. The scenarios without a bug never move it (0 on every 300-row window), and a window that straddles a
# bug's onset holds only part of it: a demo's first incident of data_bug_nulls had merchant_category drift
# and <10 % nulls.
NULL_JUMP = 0.02
NULL_ROWS = 3
# Share of a window's values beyond the reference's range (with margin): a bug. Without a bug, 300-row
# windows reach 1.3 % (3.7 % under label_shift).
OUT_OF_RANGE = 0.05
RANGE_IQRS = 10.0  # margin beyond the reference's 0.1 % / 99.9 % quantiles, in inter-quartile ranges
AUC_MARGIN = 0.05  # ROC-AUC's lower bound within this of the baseline: the model still ranks as well
AUC_Z = 1.645  # one-sided 95 % lower bound
MIN_POSITIVES = 10  # frauds needed for a ROC-AUC
BASELINE_WINDOWS = 4  # a baseline may span up to this many quality windows to hold MIN_POSITIVES frauds


@dataclass(frozen=True)
class Bounds:
    """What the reference says an input can be: a numeric range, or a categorical input's unknown share."""

    low: dict[str, float]
    high: dict[str, float]
    unknown: dict[str, float]


def _unknown_share(values: pd.Series, name: str) -> float:
    vocabulary = set(CATEGORICAL_INPUTS[name])
    return float((~values.astype(str).isin(vocabulary) | values.isna()).mean()) if len(values) else 0.0


def bounds_of(reference: pd.DataFrame, features: list[str]) -> Bounds:
    """The data checks' bounds from the reference sample, for the inputs the drift verdict uses."""
    low, high, unknown = {}, {}, {}
    for name in features:
        if name not in reference:
            continue
        if name in CATEGORICAL_INPUTS:
            unknown[name] = _unknown_share(reference[name], name)
            continue
        x = pd.to_numeric(reference[name], errors="coerce").dropna().to_numpy(np.float64)
        if len(x):
            q001, q25, q75, q999 = np.quantile(x, [0.001, 0.25, 0.75, 0.999])
            margin = RANGE_IQRS * max(q75 - q25, 1e-9)
            low[name], high[name] = float(q001 - margin), float(q999 + margin)
    return Bounds(low, high, unknown)


def data_violations(window: pd.DataFrame, bounds: Bounds) -> list[str]:
    """The data checks a window fails, worded like ``relearn.data.validate``'s (``check:input (detail)``)."""
    out = []
    for name, share in bounds.unknown.items():
        if name in window:
            now = _unknown_share(window[name], name)
            if now - share > NULL_JUMP and now * len(window) >= NULL_ROWS:
                out.append(f"null_fraction:{name} ({now:.0%} missing or unknown, reference {share:.0%})")
    for name, low in bounds.low.items():
        if name in window:
            x = pd.to_numeric(window[name], errors="coerce").to_numpy(np.float64)
            x = x[np.isfinite(x)]
            share = float(((x < low) | (x > bounds.high[name])).mean()) if len(x) else 0.0
            if share > OUT_OF_RANGE:
                out.append(f"out_of_range:{name} ({share:.0%} of the window outside the reference's range)")
    return out


@dataclass
class Evidence:
    """What one closed window showed."""

    index: int
    inputs_drifted: list[str]
    score_drift: bool
    violations: list[str]


def labelled_scores(
    conn: sqlite3.Connection,
    track: str,
    window: int,
    maturity_s: float,
    version: str | None = None,
    oldest: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of a track's newest (``oldest``: first) ``window`` matured predictions.

    Of model ``version`` if given; labelled as the rolling quality labels them.
    """
    newest = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()[0]
    if newest is None:
        return np.empty(0), np.empty(0)
    rows = conn.execute(
        "SELECT p.score, COALESCE(l.is_fraud, 0) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        "WHERE p.track = ? AND p.time <= ? AND (? IS NULL OR p.version = ?) "
        f"ORDER BY p.time {'ASC' if oldest else 'DESC'} LIMIT ?",
        (track, float(newest) - maturity_s, version, version, window),
    ).fetchall()
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    return data[:, 0], data[:, 1]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float] | None:
    """ROC-AUC (unmoved by the fraud rate under a pure prior shift) and its one-sided 95 % lower bound.

    The standard error is Hanley and McNeil's (1982). None with too few frauds or legitimate rows.
    """
    from sklearn.metrics import roc_auc_score

    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 < MIN_POSITIVES or n0 < MIN_POSITIVES:
        return None
    a = float(roc_auc_score(labels, scores))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt(max(0.0, a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    return a, a - AUC_Z * float(se)


@dataclass
class Responder:
    """Keeps each track's recent evidence and decides the response of an incident."""

    window: int = 5000  # labelled predictions in the ROC-AUC (the rolling quality window)
    maturity_s: float = 0.0
    recent: dict[str, deque[Evidence]] = field(default_factory=dict)
    auc_baseline: dict[str, float] = field(default_factory=dict)
    auc_now: dict[str, tuple[float, float]] = field(default_factory=dict)  # track → (ROC-AUC, lower bound)
    bugs: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # track → (window, check)
    conn: sqlite3.Connection | None = None  # the inference log: a drift incident reads the labels then
    _baseline_of: dict[str, str | None] = field(default_factory=dict)  # track → version of a full baseline
    bounds: Bounds | None = None
    _reference_id: int | None = None

    def reset(self) -> None:
        """A new reference (champion): bounds and ROC-AUC baselines start again."""
        self.bounds, self._reference_id = None, None
        self.auc_baseline, self.auc_now, self.bugs, self._baseline_of = {}, {}, {}, {}

    def observe(self, tester: Any, track: str, index: int, result: Any, frame: pd.DataFrame) -> list[str]:
        """Record a closed window's evidence; returns the data checks it failed."""
        if self._reference_id != id(tester.reference):
            self.reset()
            self.bounds = bounds_of(tester.reference, tester.features)
            self._reference_id = id(tester.reference)
        assert self.bounds is not None
        violations = data_violations(frame, self.bounds)
        inputs = [f for f in result.drifted if f in tester.features]
        evidence = Evidence(index, inputs, bool(result.score_drift), violations)
        self.recent.setdefault(track, deque(maxlen=RECENT_WINDOWS)).append(evidence)
        self.bugs.setdefault(track, []).extend((index, v) for v in violations)
        del self.bugs[track][:-100]
        return violations

    def observe_quality(self, conn: sqlite3.Connection, track: str) -> float | None:
        """The track's rolling ROC-AUC now, and its baseline.

        The baseline is the ROC-AUC of the first matured predictions of the model version the track serves
        now: as early, so as far from a drift, as the log allows. At least ``window`` of them, more (up to
        ``BASELINE_WINDOWS`` x) until they hold ``MIN_POSITIVES`` frauds; kept once complete.
        """
        row = conn.execute(
            "SELECT version FROM predictions WHERE track = ? ORDER BY time DESC LIMIT 1", (track,)
        ).fetchone()
        version = row[0] if row else None
        if track not in self.auc_baseline or self._baseline_of.get(track) != version:
            scores, labels = labelled_scores(
                conn, track, BASELINE_WINDOWS * self.window, self.maturity_s, version, oldest=True
            )
            enough = np.flatnonzero(np.cumsum(labels) >= MIN_POSITIVES)
            n = max(self.window, int(enough[0]) + 1) if len(enough) else len(scores)
            base = roc_auc(scores[:n], labels[:n])
            if base is not None and len(scores) >= n:  # the first n matured, with enough frauds: kept
                self.auc_baseline[track], self._baseline_of[track] = base[0], version
            elif base is not None:  # not all matured yet: provisional
                self.auc_baseline[track] = base[0]
                self._baseline_of.pop(track, None)
        auc = roc_auc(*labelled_scores(conn, track, self.window, self.maturity_s))
        if auc is None:
            return None
        self.auc_now[track] = auc
        return auc[0]

    def decide(self, data: dict[str, Any]) -> dict[str, Any]:
        """The incident with its ``response``, ``why`` and, for a drift retrain, its ``train_mode``."""
        response, why, train_mode = self._decide(data)
        decided = {**data, "response": response, "why": why}
        return (decided | {"train_mode": train_mode}) if train_mode else decided

    def _decide(self, data: dict[str, Any]) -> tuple[str, str, str | None]:
        """Response, why, and the retraining's train_mode (None: the pipeline's default, or no training)."""
        kind, track = data.get("kind"), data.get("track", "stable")
        recent = list(self.recent.get(track, ()))
        bugs = self.bugs.get(track, [])
        if bugs:
            windows = sorted({i for i, _ in bugs})
            checks = sorted({v.split(" ", 1)[0] for _, v in bugs})
            why = (
                f"data bug: {len(windows)} window(s) of {track} since window {windows[0]} failed data checks "
                f"{checks} (last: {bugs[-1][1]}); no training on broken data, page the data owners"
            )
            return "page", why, None
        if kind in ("schedule", "volume"):
            return "retrain", f"{kind} trigger", None
        moved = sorted({f for e in recent for f in e.inputs_drifted})
        drifted = [str(f) for f in data.get("drifted", [])]
        if moved:
            return "retrain", f"covariate drift: inputs {moved} drifted", COVARIATE_MODE
        what = f"scores drifted ({drifted})" if kind == "drift" else f"quality drop {data.get('reasons', [])}"
        if self.conn is not None:
            self.observe_quality(self.conn, track)  # the labels as of now
        now, base = self.auc_now.get(track), self.auc_baseline.get(track)
        if now is None or base is None:
            return (
                "retrain",
                f"{what}, no input drifted, too few labels to tell a prior shift from concept drift",
                CONCEPT_MODE,
            )
        (auc, lower) = now
        compared = f"ROC-AUC {auc:.3f}, lower bound {lower:.3f}, baseline {base:.3f}"
        if lower >= base - AUC_MARGIN:
            why = (
                f"prior (label) shift: {what} while no input drifted and the model ranks as well as before "
                f"({compared}); re-fit the threshold to the alert budget"
            )
            return "recalibrate", why, None
        why = f"concept drift: {what}, no input drifted, and the ranking degraded ({compared})"
        return "retrain", why, CONCEPT_MODE
