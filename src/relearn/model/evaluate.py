"""Offline evaluation: ranking quality, the alert-budget view a fraud team lives by, calibration, slices.

All metrics are computed against :data:`~relearn.features.spec.LABEL` (what the system knows once
chargebacks arrived), never against the generator's ground truth. The result is a JSON-able dict.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from relearn.features.spec import CATEGORICAL_INPUTS, LABEL, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.model.stats import alert_count, paired_bootstrap
from relearn.settings import ALERT_BUDGET

AMOUNT_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<20", -math.inf, 20.0),
    ("20-100", 20.0, 100.0),
    ("100-500", 100.0, 500.0),
    (">=500", 500.0, math.inf),
)
MIN_SLICE_POSITIVES = 5  # below this a slice PR-AUC is noise, so it is reported as None
CALIBRATION_BINS = 10

# Metrics where larger is better; the comparison and the report use this to colour deltas.
HEADLINE_METRICS: tuple[str, ...] = (
    "pr_auc",
    "roc_auc",
    "recall_at_budget",
    "precision_at_budget",
    "fraud_amount_caught",
    "brier",
    "ece",
)
LOWER_IS_BETTER = frozenset({"brier", "ece"})


def threshold_at_budget(scores: np.ndarray, budget: float) -> float:
    """The decision threshold that flags the top ``budget`` fraction of ``scores`` (flag = score >= t).

    Serving uses the same rule, so ties at the threshold are flagged too.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        raise ValueError("no scores")
    k = alert_count(len(scores), budget)
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def _safe(fn: Any, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """A ranking metric, or None when the labels hold a single class."""
    return float(fn(labels, scores)) if 0 < labels.sum() < len(labels) else None


def calibration(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability-diagram data and the expected calibration error (equal-width bins, count-weighted)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    score_sum = np.bincount(which, weights=scores, minlength=bins)
    label_sum = np.bincount(which, weights=labels, minlength=bins)
    filled = count > 0
    mean_pred = np.where(filled, score_sum / np.maximum(count, 1), np.nan)
    frac_pos = np.where(filled, label_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[filled] * np.abs(mean_pred[filled] - frac_pos[filled])) / max(len(scores), 1))
    return {
        "ece": ece,
        "bin_edges": edges.tolist(),
        "count": count.tolist(),
        "mean_predicted": [None if np.isnan(v) else float(v) for v in mean_pred],
        "fraction_positive": [None if np.isnan(v) else float(v) for v in frac_pos],
    }


def _slice_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    positives = int(labels.sum())
    flagged = scores >= threshold
    return {
        "n": len(labels),
        "positives": positives,
        "pr_auc": _safe(average_precision_score, labels, scores)
        if positives >= MIN_SLICE_POSITIVES
        else None,
        "recall_at_budget": float((flagged & (labels == 1)).sum() / positives) if positives else None,
        "alerts": int(flagged.sum()),
    }


def amount_bucket(amount: pd.Series) -> np.ndarray:
    """The amount bucket label of every row (see :data:`AMOUNT_BUCKETS`)."""
    values = amount.to_numpy(np.float64)
    out = np.full(len(values), AMOUNT_BUCKETS[-1][0], dtype=object)
    for name, low, high in AMOUNT_BUCKETS:
        out[(values >= low) & (values < high)] = name
    return out


def _category_slice(column: pd.Series) -> np.ndarray:
    """Merchant categories, with missing and out-of-vocabulary values pooled so slices stay bounded."""
    values = column.astype("string").fillna("").to_numpy(object)
    known = np.isin(values, CATEGORICAL_INPUTS["merchant_category"])
    return np.where(known, values, np.where(values == "", "(missing)", "(other)")).astype(object)


def slice_keys(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Slice membership arrays: merchant category, amount bucket, new vs known user."""
    return {
        "merchant_category": _category_slice(frame["merchant_category"]),
        "amount_bucket": amount_bucket(frame["amount"]),
        "user": np.where(frame["is_new_user"].to_numpy(np.float64) > 0.5, "new", "known").astype(object),
    }


def evaluate(scores: np.ndarray, frame: pd.DataFrame, alert_budget: float = ALERT_BUDGET) -> dict[str, Any]:
    """Evaluate fraud scores on ``frame`` (needs LABEL, amount, merchant_category, is_new_user).

    Args:
        scores: Fraud probabilities, one per row of ``frame``.
        frame: The evaluation rows.
        alert_budget: Fraction of transactions the review team can look at; the top-scored ones are flagged.

    Returns:
        Headline metrics (``pr_auc``, ``roc_auc``, ``recall_at_budget``, ``precision_at_budget``,
        ``fraud_amount_caught``, ``brier``, ``ece``), the budget ``threshold``, ``calibration`` data
        and ``slices`` (group → value → n, positives, pr_auc, recall_at_budget at the global threshold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = frame[LABEL].to_numpy().astype(np.int64)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} rows")
    amounts = frame["amount"].to_numpy(np.float64)
    threshold = threshold_at_budget(scores, alert_budget)
    flagged = scores >= threshold
    caught = flagged & (labels == 1)
    positives = int(labels.sum())
    fraud_amount = float(amounts[labels == 1].sum())
    calib = calibration(scores, labels)

    slices: dict[str, dict[str, Any]] = {}
    for group, keys in slice_keys(frame).items():
        slices[group] = {
            str(value): _slice_metrics(scores[keys == value], labels[keys == value], threshold)
            for value in sorted(set(keys))
        }
    return {
        "n": len(labels),
        "positives": positives,
        "positive_rate": positives / max(len(labels), 1),
        "pr_auc": _safe(average_precision_score, labels, scores),
        "roc_auc": _safe(roc_auc_score, labels, scores),
        "alert_budget": alert_budget,
        "threshold": threshold,
        "alerts": int(flagged.sum()),
        "recall_at_budget": float(caught.sum() / positives) if positives else None,
        "precision_at_budget": float(caught.sum() / flagged.sum()),
        "fraud_amount_caught": float(amounts[caught].sum() / fraud_amount) if fraud_amount > 0 else None,
        "brier": float(brier_score_loss(labels, scores)),
        "ece": calib["ece"],
        "calibration": calib,
        "slices": slices,
    }


def paired(
    candidate_scores: np.ndarray,
    champion_scores: np.ndarray,
    frame: pd.DataFrame,
    alert_budget: float = ALERT_BUDGET,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The candidate against the champion on the same rows of ``frame``: the gate's paired bootstrap.

    See :func:`relearn.model.stats.paired_bootstrap`; fraud amounts come from ``frame["amount"]``.
    """
    return paired_bootstrap(
        candidate_scores,
        champion_scores,
        frame[LABEL].to_numpy().astype(np.int64),
        frame["amount"].to_numpy(np.float64),
        budget=alert_budget,
        n_boot=n_boot,
        seed=seed,
    )


def baseline(
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    kind: Literal["logistic", "hgb"] = "logistic",
    seed: int = 0,
) -> np.ndarray:
    """Scores of a scikit-learn baseline trained on the same MODEL_INPUTS.

    ``logistic``: balanced logistic regression on signed-log, standardized numerics and one-hot
    categoricals — the simple model a neural network has to justify itself against. ``hgb``: a
    histogram gradient-boosting model with native categorical support, a much stronger reference.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

    from relearn.model.net import signed_log1p

    numeric, categorical = list(NUMERIC_INPUTS), list(CATEGORICAL_INPUTS)

    def inputs(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[list(MODEL_INPUTS)].copy()
        out[numeric] = out[numeric].astype(np.float64).fillna(0.0)
        out[categorical] = out[categorical].astype(str)
        return out

    vocab = [list(CATEGORICAL_INPUTS[c]) for c in categorical]
    if kind == "logistic":
        model = make_pipeline(
            ColumnTransformer(
                [
                    ("num", make_pipeline(FunctionTransformer(signed_log1p), StandardScaler()), numeric),
                    ("cat", OneHotEncoder(categories=vocab, handle_unknown="ignore"), categorical),
                ]
            ),
            LogisticRegression(class_weight="balanced", max_iter=500, random_state=seed),
        )
    else:
        unknown_as_nan = {
            "handle_unknown": "use_encoded_value",
            "unknown_value": np.nan,
            "encoded_missing_value": np.nan,
        }
        model = make_pipeline(
            ColumnTransformer(
                [
                    ("num", "passthrough", numeric),
                    # Unknown categories become NaN, which the boosting model treats as missing.
                    ("cat", OrdinalEncoder(categories=vocab, **unknown_as_nan), categorical),
                ]
            ),
            HistGradientBoostingClassifier(
                categorical_features=list(range(len(numeric), len(numeric) + len(categorical))),
                class_weight="balanced",
                random_state=seed,
            ),
        )
    model.fit(inputs(train_df), train_df[LABEL].to_numpy().astype(int))
    return model.predict_proba(inputs(test_df))[:, 1]


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare(
    candidate_metrics: dict[str, Any],
    baseline_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Side-by-side headline metrics and per-slice deltas (candidate minus baseline / champion).

    All three must be evaluated on the same rows for the deltas to mean anything.
    """
    headline = {}
    for name in HEADLINE_METRICS:
        cand = candidate_metrics.get(name)
        row = {
            "candidate": cand,
            "baseline": baseline_metrics.get(name),
            "champion": champion_metrics.get(name) if champion_metrics else None,
            "lower_is_better": name in LOWER_IS_BETTER,
        }
        row["delta_vs_baseline"] = _delta(cand, row["baseline"])
        row["delta_vs_champion"] = _delta(cand, row["champion"])
        headline[name] = row

    slices: dict[str, dict[str, Any]] = {}
    reference = champion_metrics or baseline_metrics
    for group, values in candidate_metrics.get("slices", {}).items():
        for value, cand in values.items():
            ref = reference.get("slices", {}).get(group, {}).get(value, {})
            slices.setdefault(group, {})[value] = {
                "n": cand["n"],
                "positives": cand["positives"],
                "candidate_recall": cand["recall_at_budget"],
                "reference_recall": ref.get("recall_at_budget"),
                "delta_recall": _delta(cand["recall_at_budget"], ref.get("recall_at_budget")),
                "candidate_pr_auc": cand["pr_auc"],
                "reference_pr_auc": ref.get("pr_auc"),
                "delta_pr_auc": _delta(cand["pr_auc"], ref.get("pr_auc")),
            }
    return {
        "metrics": headline,
        "slices": slices,
        "slice_reference": "champion" if champion_metrics else "baseline",
        "has_champion": champion_metrics is not None,
    }
