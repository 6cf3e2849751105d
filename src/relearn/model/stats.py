"""Paired bootstrap of the gate metrics: two models' scores on the same labelled rows, resampled together.

Each resample draws the rows with replacement once and evaluates both models on it, so what the models
have in common (the hard rows, the easy rows) cancels in their difference and only their disagreement
counts. Resamples are row counts (``counts[b, i]``: how often row ``i`` is in resample ``b``), and every
metric is computed for all resamples at once from cumulative sums over the rows in score order:

* ``recall_at_budget``: the top ``alert_count(n, budget)`` rows are flagged, ties at the threshold too
  (the rule of :func:`relearn.model.evaluate.threshold_at_budget` and of serving);
* ``fraud_amount_caught``: the same, weighted by the fraud's amount;
* ``pr_auc``: average precision over the distinct scores (scikit-learn's ``average_precision_score``
  with the counts as sample weights).

With all counts 1 these are exactly the numbers :func:`relearn.model.evaluate.evaluate` reports.
numpy only: the controller and the drift environment import it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("recall_at_budget", "pr_auc", "fraud_amount_caught")
CELLS_PER_CHUNK = 2_000_000  # resamples x rows evaluated at once: a few tens of MB of intermediates


def alert_count(n: int, budget: float) -> int:
    """How many of ``n`` transactions the review team looks at: ceil(budget * n), at least one."""
    return max(1, math.ceil(round(budget * n, 9)))  # round: 0.07 * 100 must be 7, not 8


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` rows as counts, ``(chunk, n)`` arrays totalling ``n_boot`` rows."""
    chunk = max(1, CELLS_PER_CHUNK // max(n, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        picks = rng.integers(0, n, size=(b, n), dtype=np.int32) + (np.arange(b, dtype=np.int32) * n)[:, None]
        yield np.bincount(picks.ravel(), minlength=b * n).reshape(b, n)


def weighted_metrics(
    counts: np.ndarray, scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, budget: float
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of ``counts`` (NaN where a resample has no fraud).

    Frauds are rare: the cumulative sums of caught frauds run over the fraud rows only, and only the
    count of rows seen runs over all rows.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] > 0
    c = np.take(counts, order, axis=1)
    seen = np.cumsum(c, axis=1)
    fraud = np.flatnonzero(y)  # positions of the frauds in score order
    zero = np.zeros((len(c), 1))
    fraud_counts = np.take(c, fraud, axis=1)
    caught = np.hstack([zero, np.cumsum(fraud_counts, axis=1)])  # caught[:, j]: frauds among the first j
    caught_amount = np.hstack([zero, np.cumsum(fraud_counts * amounts[order][fraud], axis=1)])
    # Tie groups of equal scores: a threshold flags a whole group, precision is taken at group ends.
    group = np.concatenate([[0], np.cumsum(np.diff(s) != 0)])
    group_end = np.concatenate([np.flatnonzero(np.diff(s) != 0), [len(s) - 1]])
    rows = np.arange(len(c))
    k = alert_count(len(s), budget)  # resamples keep n rows, so k is fixed
    last = group_end[group[np.minimum((seen < k).sum(axis=1), len(s) - 1)]]  # last flagged row
    flagged_frauds = np.searchsorted(fraud, last, side="right")
    positives, fraud_amount = caught[:, -1], caught_amount[:, -1]
    ends = group_end[np.unique(group[fraud])]  # groups holding a fraud: the only steps of recall
    tp, seen_at = caught[:, np.searchsorted(fraud, ends, side="right")], seen[:, ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(positives > 0, caught[rows, flagged_frauds] / positives, np.nan)
        amount = np.where(fraud_amount > 0, caught_amount[rows, flagged_frauds] / fraud_amount, np.nan)
        gained = np.diff(tp, axis=1, prepend=0.0)
        precision = np.divide(tp, seen_at, out=np.zeros_like(tp), where=seen_at > 0)
        pr_auc = np.where(positives > 0, (gained * precision).sum(axis=1) / positives, np.nan)
    return {"recall_at_budget": recall, "pr_auc": pr_auc, "fraud_amount_caught": amount}


def paired_bootstrap(
    candidate: Sequence[float] | np.ndarray,
    champion: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    amounts: Sequence[float] | np.ndarray | None = None,
    *,
    budget: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Both models' metrics on the rows and ``n_boot`` paired resamples of their differences.

    Returns:
        A JSON-able dict: ``n``, ``positives``, ``budget``, ``n_boot``, ``seed`` and ``metrics``: per metric
        ``candidate``, ``champion``, ``difference`` (candidate minus champion; None when undefined) and
        ``draws`` (the resampled differences, resamples without a fraud left out).
    """
    cand, champ = np.asarray(candidate, np.float64), np.asarray(champion, np.float64)
    y = np.asarray(labels, np.float64)
    a = np.ones_like(y) if amounts is None else np.asarray(amounts, np.float64)
    if not len(cand) == len(champ) == len(y) == len(a) or len(y) == 0:
        raise ValueError(f"paired rows differ or are empty: {len(cand)}, {len(champ)}, {len(y)}, {len(a)}")
    ones = np.ones((1, len(y)))
    point = {
        name: {k: weighted_metrics(ones, s, y, a, budget)[k][0] for k in METRICS}
        for name, s in (("candidate", cand), ("champion", champ))
    }
    draws: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for counts in resample_counts(len(y), n_boot, np.random.default_rng(seed)):
        a_metrics = weighted_metrics(counts, cand, y, a, budget)
        b_metrics = weighted_metrics(counts, champ, y, a, budget)
        for m in METRICS:
            draws[m].append(a_metrics[m] - b_metrics[m])
    out: dict[str, Any] = {}
    for m in METRICS:
        d = np.concatenate(draws[m]) if draws[m] else np.empty(0)
        c, r = point["candidate"][m], point["champion"][m]
        out[m] = {
            "candidate": _num(c),
            "champion": _num(r),
            "difference": _num(c - r),
            "draws": [round(float(v), 6) for v in d[~np.isnan(d)]],
        }
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "budget": budget,
        "n_boot": n_boot,
        "seed": seed,
        "metrics": out,
    }


def bounds(draws: Sequence[float], confidence: float) -> tuple[float | None, float | None]:
    """One-sided bounds at ``confidence``: the ``1 - confidence`` and ``confidence`` quantiles of the draws.

    The difference is above the lower bound with that confidence (and below the upper one); together they
    are the central ``2 * confidence - 1`` interval (90 % for 0.95). None without draws.
    """
    if len(draws) == 0:
        return None, None
    lo, hi = np.quantile(np.asarray(draws, np.float64), [1 - confidence, confidence])
    return float(lo), float(hi)


def summary(paired: dict[str, Any], confidence: float) -> dict[str, dict[str, float | None]]:
    """Per metric: both values, the difference and its bounds at ``confidence`` (no draws)."""
    out = {}
    for name, row in paired["metrics"].items():
        lower, upper = bounds(row["draws"], confidence)
        out[name] = {k: row[k] for k in ("candidate", "champion", "difference")}
        out[name] |= {"lower": lower, "upper": upper}
    return out


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
