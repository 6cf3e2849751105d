"""Small data sets: a Feast-shaped training frame with learnable fraud, a hand-made world of edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relearn.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA
from relearn.features.spec import CATEGORICAL_INPUTS, LABEL

N_ROWS = 100_000
SEED = 7


def synthetic_frame(n: int = N_ROWS, seed: int = SEED) -> pd.DataFrame:
    """A training-set frame shaped like the Feast output (see the model contract)."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 30 * 86400, n)), unit="s"
    )
    amount = rng.lognormal(3.5, 1.2, n)
    mean7 = rng.lognormal(3.5, 0.6, n)
    f = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "event_timestamp": ts,
            "user_id": rng.integers(0, 5000, n).astype(str),
            "merchant_id": rng.integers(0, 800, n).astype(str),
            "amount": amount,
            "user_txn_count_1h": rng.poisson(0.4, n).astype(float),
            "user_txn_count_24h": rng.poisson(3, n).astype(float),
            "user_txn_count_7d": rng.poisson(15, n).astype(float),
            "user_amount_mean_7d": mean7,
            "user_amount_std_7d": mean7 * rng.uniform(0.2, 1.0, n),
            "user_distinct_merchants_7d": rng.poisson(6, n).astype(float),
            "merchant_txn_count_24h": rng.poisson(50, n).astype(float),
            "merchant_amount_mean_7d": rng.lognormal(3.5, 0.5, n),
            "merchant_chargeback_rate_30d": rng.beta(1, 150, n),
            "log_amount": np.log1p(amount),
            "amount_zscore_user": rng.normal(0, 1.3, n),
            "amount_ratio_user_mean": amount / mean7,
            "log_seconds_since_last_txn": rng.normal(9, 2, n),
            "country_changed": (rng.random(n) < 0.06).astype(float),
            "device_changed": (rng.random(n) < 0.06).astype(float),
            "is_new_user": (rng.random(n) < 0.1).astype(float),
            "day_of_week": rng.integers(0, 7, n).astype(float),
        }
    )
    for name, vocab in CATEGORICAL_INPUTS.items():
        values = rng.choice(np.array(vocab), size=n).astype(object)
        noise = rng.random(n)
        values[noise < 0.01] = ""  # missing
        values[(noise >= 0.01) & (noise < 0.02)] = "UNSEEN"  # out of vocabulary
        f[name] = values
    hour = rng.integers(0, 24, n)
    f["hour_of_day"] = hour.astype(str)
    logit = (
        -8.0
        + 6.0 * f["device_changed"] * (f["amount_zscore_user"] > 1.0)
        + 5.5 * (f["user_txn_count_1h"] >= 2) * (f["log_seconds_since_last_txn"] < 7.5)
        + 60 * f["merchant_chargeback_rate_30d"]
        + 1.5 * f["country"].isin(["NG", "RU"])
        + 1.0 * (f["channel"] == "ecommerce")
        + 1.2 * (hour < 5)
        + 4.5 * f["is_new_user"] * f["merchant_category"].isin(["digital_goods", "electronics"])
        + 0.8 * (f["merchant_category"] == "gambling")
    )
    f["is_fraud"] = rng.random(n) < 1 / (1 + np.exp(-logit))
    f["fraud_pattern"] = np.where(f["is_fraud"], "card_testing", "none")
    f[LABEL] = (f["is_fraud"] & (rng.random(n) < 0.92)).astype(int)  # some fraud never gets a chargeback
    return f


T0 = pd.Timestamp("2024-03-04 10:00", tz="UTC")  # a Monday
MIN = pd.Timedelta(minutes=1)


def transactions(rows: list[tuple]) -> pd.DataFrame:
    """Transactions from (id, time, user, merchant, amount, country, device, is_fraud) tuples."""
    frame = pd.DataFrame(
        rows,
        columns=[
            "transaction_id",
            "event_timestamp",
            "user_id",
            "merchant_id",
            "amount",
            "country",
            "device_id",
            "is_fraud",
        ],
    )
    frame = frame.assign(currency="EUR", merchant_category="grocery", channel="pos")
    frame["fraud_pattern"] = np.where(frame["is_fraud"], "account_takeover", "none")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("us")
    return frame[TRANSACTION_SCHEMA.names]


def chargebacks(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["transaction_id", "chargeback_timestamp"]).assign(is_fraud=True)
    frame["chargeback_timestamp"] = pd.to_datetime(frame["chargeback_timestamp"], utc=True).dt.as_unit("us")
    return frame[LABEL_SCHEMA.names]


def world() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A user whose later transactions are huge, a same-time pair, and chargebacks before/after t."""
    tx = transactions(
        [
            ("a1", T0, "u1", "m1", 10.0, "DE", "d1", True),
            ("b1", T0 + 10 * MIN, "u2", "m1", 50.0, "DE", "d9", True),
            ("a2", T0 + 30 * MIN, "u1", "m2", 20.0, "DE", "d1", False),
            ("a3", T0 + 60 * MIN, "u1", "m1", 30.0, "DE", "d1", False),  # a1 sits exactly on the 1 h edge
            ("a4", T0 + 120 * MIN, "u1", "m1", 5000.0, "FR", "d2", False),
            ("a5", T0 + 120 * MIN, "u1", "m1", 7000.0, "FR", "d2", False),  # same instant as a4
            ("a6", T0 + pd.Timedelta(days=3), "u1", "m1", 9000.0, "FR", "d2", False),
        ]
    )
    labels = chargebacks(
        [
            ("a1", T0 + 90 * MIN),  # received between a3 and a4
            ("b1", T0 + pd.Timedelta(days=10)),  # received after a6 and after the label cut-off
        ]
    )
    return tx, labels
