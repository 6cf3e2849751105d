"""The one definition of the entity features: windows, aggregates and how each feature is finished.

Every entity feature is an aggregate of the entity's own events in a window ``[t - w, t)`` of event time.
Three engines compute them — the pandas engine over the lake (:mod:`relearn.features.transforms`, for the
training set and backfill), the streaming state behind the transformer (:mod:`relearn.features.state`) and
later others — and all of them take the widths from :data:`WINDOWS` and finish the intermediate values
(count, centred sum, centred sum of squares, distinct count, last event) with the functions below, so a
window boundary or a formula lives in exactly one place. This is Chronon's split of an aggregation into
an intermediate representation (engine-specific) and a finalisation (shared).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

US = 1_000_000  # microseconds per second: event times are int64 epoch microseconds everywhere
HOUR_US = 3600 * US
DAY_US = 24 * HOUR_US

# How far back an entity's history counts: the previous transaction is looked for in [t - horizon, t),
# Feast's TTL on the views is the same, and model_inputs treats anything older as "no history".
HISTORY_HORIZON = timedelta(days=30)
HORIZON_US = int(HISTORY_HORIZON.total_seconds()) * US

# Window width of every entity feature (µs). Windows are [t - w, t): the event at t itself is not in them.
WINDOWS: dict[str, int] = {
    "user_txn_count_1h": HOUR_US,
    "user_txn_count_24h": DAY_US,
    "user_txn_count_7d": 7 * DAY_US,
    "user_amount_mean_7d": 7 * DAY_US,
    "user_amount_std_7d": 7 * DAY_US,
    "user_distinct_merchants_7d": 7 * DAY_US,
    "user_last_txn_unix": HORIZON_US,  # the last event in [t - horizon, t)
    "user_last_country": HORIZON_US,
    "user_last_device": HORIZON_US,
    "merchant_txn_count_24h": DAY_US,
    "merchant_amount_mean_7d": 7 * DAY_US,
    "merchant_chargeback_rate_30d": 30 * DAY_US,  # chargebacks received in the window / transactions in it
}
# The longest window of each entity's transactions: what a streaming state must keep (plus lateness).
USER_RETENTION_US = max(w for f, w in WINDOWS.items() if f.startswith("user_") and "last" not in f)
MERCHANT_RETENTION_US = max(w for f, w in WINDOWS.items() if f.startswith("merchant_"))


def mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray, centre: np.ndarray | float) -> tuple:
    """Mean and sample standard deviation from a count and sums of ``x - centre`` and its square.

    Zero where undefined (no value for the mean, fewer than two for the std). Any centre gives the same
    result in exact arithmetic; one close to the values keeps the cancellation in ``ss - s²/n`` small.
    """
    n, s, ss = (np.asarray(v, dtype=np.float64) for v in (n, s, ss))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / n + centre, 0.0)
        var = np.where(n > 1, (ss - s * s / n) / (n - 1), 0.0)
    return mean, np.sqrt(np.clip(var, 0.0, None))


def chargeback_rate(chargebacks: np.ndarray, transactions: np.ndarray) -> np.ndarray:
    """Chargebacks received in the window per transaction in it, at most 1; 0 without transactions.

    Chargebacks trail their transactions, so they can outlive them in the window; a rate above 1 carries
    no extra information.
    """
    chargebacks = np.asarray(chargebacks, dtype=np.float64)
    transactions = np.asarray(transactions, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(transactions > 0, np.minimum(chargebacks / transactions, 1.0), 0.0)


def centred_sums(amounts: np.ndarray) -> tuple[int, float, float, float]:
    """Count, sum and sum of squares of the non-null amounts around the first of them (a direct sum)."""
    values = amounts[~np.isnan(amounts)]
    if not len(values):
        return 0, 0.0, 0.0, 0.0
    centre = float(values[0])
    x = values - centre
    return len(values), float(x.sum()), float((x * x).sum()), centre
