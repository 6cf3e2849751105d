"""Generated rows to the schema's frames: time order, deterministic ids, codes back to strings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relearn.data import cardholders
from relearn.data.generator_config import GeneratorConfig
from relearn.data.rows import Rows, take
from relearn.data.schema import (
    CHANNELS,
    COUNTRIES,
    CURRENCIES,
    FRAUD_PATTERNS,
    LABEL_SCHEMA,
    MERCHANT_CATEGORIES,
    TRANSACTION_SCHEMA,
)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection on uint64, so distinct inputs give distinct, random-looking ids."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _lookup(domain: tuple[str, ...], codes: np.ndarray) -> np.ndarray:
    """Codes to strings; code -1 (the appended last entry) becomes None."""
    return np.array([*domain, None], dtype=object)[codes]


def _hex_ids(keys: np.ndarray, seed: int, prefix: str, width: int = 16) -> np.ndarray:
    """Deterministic, unique (bijective) and order-free string ids from integer keys."""
    mixed = mix64(keys.astype(np.uint64) ^ mix64(np.array([seed + 1], dtype=np.uint64)))
    return np.array([f"{prefix}{x:016x}"[: len(prefix) + width] for x in mixed.tolist()], dtype=object)


def to_frames(rows: Rows, config: GeneratorConfig, id_ts: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sort by time, assign ids and turn codes into the schema's columns."""
    n = len(id_ts)
    # Ids depend on the start day and the row's position in ``id_ts`` order: a scenario appends rows only
    # after its onset, so every earlier row keeps its position and id.
    position = np.empty(n, dtype=np.uint64)
    position[np.argsort(id_ts, kind="stable")] = np.arange(n, dtype=np.uint64)
    order = np.argsort(rows["ts"], kind="stable")
    rows = take(rows, order)
    key = position[order] + (np.uint64(int(config.start.timestamp()) // 86_400) << np.uint64(32))
    tx_id = _hex_ids(key, config.seed, "tx_")
    codes, inverse = np.unique(rows["device"], return_inverse=True)
    device = _hex_ids(codes, config.seed + 7919, "dev_", width=12)[inverse]
    ts = pd.DatetimeIndex(rows["ts"].astype("datetime64[us]")).tz_localize("UTC")
    users = cardholders.user_ids(config.n_users)
    merchants = np.array([f"m{i:05d}" for i in range(config.n_merchants)], dtype=object)
    transactions = pd.DataFrame(
        {
            "transaction_id": tx_id,
            "event_timestamp": ts,
            "user_id": users[rows["user"]],
            "merchant_id": merchants[rows["merchant"]],
            "amount": rows["amount"].astype(np.float64),
            "currency": _lookup(CURRENCIES, rows["currency"]),
            "merchant_category": _lookup(MERCHANT_CATEGORIES, rows["category"]),
            "channel": _lookup(CHANNELS, rows["channel"]),
            "country": _lookup(COUNTRIES, rows["country"]),
            "device_id": device,
            "is_fraud": rows["pattern"] > 0,
            "fraud_pattern": _lookup(FRAUD_PATTERNS, rows["pattern"]),
        },
        columns=TRANSACTION_SCHEMA.names,
    )
    charged = np.flatnonzero(rows["cb_delay"] >= 0)
    cb_ts = (rows["ts"][charged] + rows["cb_delay"][charged]).astype("datetime64[us]")
    labels = pd.DataFrame(
        {
            "transaction_id": tx_id[charged],
            "chargeback_timestamp": pd.DatetimeIndex(cb_ts).tz_localize("UTC"),
            "is_fraud": np.ones(len(charged), dtype=bool),
        },
        columns=LABEL_SCHEMA.names,
    )
    labels = labels.sort_values("chargeback_timestamp", kind="stable", ignore_index=True)
    return transactions, labels
