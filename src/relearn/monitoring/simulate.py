"""Offline stream of model inputs from the generator: what the predictor would see, for tests and benchmarks.

The generator's transactions are joined point-in-time with the entity feature tables (``merge_asof`` on
the transaction time, Feast's semantics: the row at ``t`` describes the entity just before ``t``) and turned
into :data:`~relearn.features.spec.MODEL_INPUTS` by :func:`~relearn.features.transforms.model_inputs`, the
same feature code as training and serving. numpy/pandas only: runs in the drift environment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relearn.data.generator import GeneratorConfig, generate
from relearn.features.spec import MERCHANT_FEATURES, USER_FEATURES
from relearn.features.transforms import entity_feature_tables, model_inputs


def asof_join(left: pd.DataFrame, table: pd.DataFrame, key: str, names: tuple[str, ...]) -> pd.DataFrame:
    """``left`` with the entity features ``names`` as of each row's time (Feast's point-in-time semantics)."""
    right = table[[key, "event_timestamp", *names]].sort_values("event_timestamp", kind="stable")
    return pd.merge_asof(
        left.sort_values("event_timestamp", kind="stable"), right, on="event_timestamp", by=key
    )


def model_input_stream(config: GeneratorConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Generate transactions and return them with their model inputs, in time order.

    Args:
        config: The generator configuration (scenario and onset included).

    Returns:
        ``(stream, labels, onset)``: ``stream`` has ``transaction_id, event_timestamp, is_fraud`` plus the
        MODEL_INPUTS columns; ``labels`` the chargebacks (``transaction_id, chargeback_timestamp``).
    """
    data = generate(config)
    tx = data.transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    users, merchants = entity_feature_tables(tx, data.labels)
    joined = asof_join(tx, users, "user_id", USER_FEATURES)
    joined = asof_join(joined, merchants, "merchant_id", MERCHANT_FEATURES)
    joined = joined.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    inputs = model_inputs(joined)
    stream = pd.concat([joined[["transaction_id", "event_timestamp", "is_fraud"]], inputs], axis=1)
    return stream, data.labels, data.onset


def toy_scores(stream: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """A stand-in fraud score (no torch here): a fixed logistic function of a few inputs, plus noise.

    It reacts to amounts and behaviour changes the way a trained model roughly does, so score drift and
    label-based quality behave realistically in tests without the platform environment.
    """
    rng = np.random.default_rng(seed)
    z = (
        -5.0
        + 0.5 * stream["log_amount"].to_numpy(float)
        + 0.8 * stream["amount_zscore_user"].to_numpy(float).clip(-3, 6)
        + 1.5 * stream["device_changed"].to_numpy(float)
        + 1.2 * stream["country_changed"].to_numpy(float)
        + 0.3 * np.log1p(stream["user_txn_count_1h"].to_numpy(float))
        + 2.0 * stream["is_fraud"].to_numpy(float) * (stream["device_changed"].to_numpy(float) > 0)
        + rng.normal(0.0, 0.5, len(stream))
    )
    return 1.0 / (1.0 + np.exp(-z))


def time_ordered(
    stream: pd.DataFrame, reference_start: pd.Timestamp, reference_days: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(reference, rest)``: whole days from ``reference_start`` and everything after them, in time order.

    The reference covers whole days (every hour of the day, every weekday once a week) so the detector can
    match each window's time-of-day mix; the rest is the stream the windows are cut from, unshuffled.
    """
    end = reference_start + pd.Timedelta(days=reference_days)
    times = stream["event_timestamp"]
    reference = stream[(times >= reference_start) & (times < end)].reset_index(drop=True)
    return reference, stream[times >= end].reset_index(drop=True)


def count_windows(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """Consecutive windows of ``size`` events (the last, partial one dropped), in order."""
    return [frame.iloc[i * size : (i + 1) * size] for i in range(len(frame) // size)]


def reference_model(reference: pd.DataFrame, label: str = "is_fraud"):
    """A stand-in for the champion: a logistic regression fitted on the reference period's labels.

    Unlike :func:`toy_scores` it has learned the fraud patterns of the reference period, so a new
    pattern (the ``concept_drift`` scenario's bust-outs) lowers its precision and recall the way it does
    for the trained model. Returns a function ``frame -> scores``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from relearn.features.spec import NUMERIC_INPUTS

    inputs = list(NUMERIC_INPUTS)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(reference[inputs].to_numpy(np.float64), reference[label].to_numpy(np.int64))
    return lambda frame: model.predict_proba(frame[inputs].to_numpy(np.float64))[:, 1]
