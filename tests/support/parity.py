"""Offline (pandas engine, point-in-time) entity features of given transactions, and a feature-wise diff.

The reference side of every parity test: :func:`relearn.features.transforms.entity_feature_tables` rows
at each transaction's own event time — exactly what the training set joins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from relearn.data.generator import GeneratorConfig, generate
from relearn.features.state import FEATURES, Event
from relearn.features.transforms import entity_feature_tables, epoch_us

RTOL = 1e-9  # floats: relative; counts and strings: exact


def small_world(seed: int = 3, days: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A few thousand transactions with chargebacks (fast to replay)."""
    data = generate(GeneratorConfig(days=days, n_users=150, n_merchants=40, seed=seed))
    return data.transactions.reset_index(drop=True), data.labels


def events(transactions: pd.DataFrame) -> list[Event]:
    """The transactions as state events, in frame order."""
    times = epoch_us(transactions["event_timestamp"])
    return [
        Event(
            r.transaction_id,
            int(t),
            r.user_id,
            r.merchant_id,
            None if pd.isna(r.amount) else float(r.amount),
            r.country or "",
            r.device_id or "",
        )
        for r, t in zip(transactions.itertuples(), times, strict=True)
    ]


def chargeback_stream(transactions: pd.DataFrame, labels: pd.DataFrame) -> list[tuple[str, str, int]]:
    """Fraud chargebacks as ``(merchant_id, transaction_id, received µs)``, in arrival order."""
    merchant_of = dict(zip(transactions["transaction_id"], transactions["merchant_id"], strict=True))
    fraud = labels[labels["is_fraud"].fillna(False).astype(bool)].sort_values("chargeback_timestamp")
    received = epoch_us(fraud["chargeback_timestamp"])
    return [
        (merchant_of[tid], tid, int(t))
        for tid, t in zip(fraud["transaction_id"], received, strict=True)
        if tid in merchant_of
    ]


def offline_at(transactions: pd.DataFrame, labels: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per transaction id: its entity features from the pandas engine, at its own event time."""
    users, merchants = entity_feature_tables(transactions, labels)
    rows = {}
    index = {
        "user_id": users.assign(_t=epoch_us(users["event_timestamp"])).set_index(["user_id", "_t"]),
        "merchant_id": merchants.assign(_t=epoch_us(merchants["event_timestamp"])).set_index(
            ["merchant_id", "_t"]
        ),
    }
    user_rows = index["user_id"][~index["user_id"].index.duplicated()]
    merchant_rows = index["merchant_id"][~index["merchant_id"].index.duplicated()]
    times = epoch_us(transactions["event_timestamp"])
    u = user_rows.loc[list(zip(transactions["user_id"], times, strict=True))]
    m = merchant_rows.loc[list(zip(transactions["merchant_id"], times, strict=True))]
    for i, tid in enumerate(transactions["transaction_id"]):
        row = {f: u.iloc[i][f] for f in FEATURES if f.startswith("user_")}
        row.update({f: m.iloc[i][f] for f in FEATURES if f.startswith("merchant_")})
        rows[tid] = row
    return rows


def offline_for_requests(
    transactions: pd.DataFrame, labels: pd.DataFrame, requests: pd.DataFrame
) -> pd.DataFrame:
    """``requests`` joined with the pandas engine's entity features at each request's own time.

    The requests are added to the lake as transactions (under fresh ids), as serving adds what it scores:
    one request sees another of its card or merchant only if it is earlier in event time.
    """
    fresh = requests.assign(transaction_id=[f"request-{i}" for i in range(len(requests))])
    lake = pd.concat([transactions, fresh], ignore_index=True)
    features = offline_at(lake, labels)
    rows = [features[tid] for tid in fresh["transaction_id"]]
    return requests.reset_index(drop=True).assign(**pd.DataFrame(rows))


def _equal(online: Any, offline: Any) -> bool:
    def blank(v: Any) -> bool:
        return v is None or v == "" or (isinstance(v, float) and math.isnan(v))

    if blank(online) or blank(offline):
        return blank(online) and blank(offline)
    if isinstance(online, str) or isinstance(offline, str):
        return str(online) == str(offline)
    return bool(np.isclose(float(online), float(offline), rtol=RTOL, atol=0.0))


def mismatches(served: dict[str, dict[str, Any]], offline: dict[str, dict[str, Any]]) -> list[tuple]:
    """``(transaction_id, feature, online, offline)`` for every feature that differs."""
    out = []
    for tid, values in served.items():
        for feature in FEATURES:
            if not _equal(values[feature], offline[tid][feature]):
                out.append((tid, feature, values[feature], offline[tid][feature]))
    return out
