"""The model's feature contract: names, defaults for cold start, and the model-input columns.

Training (offline, point-in-time joins) and serving (online store) both go through
:func:`relearn.features.transforms.model_inputs`, which turns raw request fields plus entity features into
exactly the columns listed in :data:`MODEL_INPUTS`.
"""

from __future__ import annotations

from relearn.data.schema import CATEGORICAL_DOMAINS

FEATURE_SERVICE = "fraud_model_v1"
USER_VIEW = "user_features"
MERCHANT_VIEW = "merchant_features"

# Entity features. Each row describes the entity *just before* a transaction at its event_timestamp
# (windows are [t - w, t)), so a point-in-time join at the transaction's own time never sees that
# transaction or anything later.
USER_FEATURES: tuple[str, ...] = (
    "user_txn_count_1h",
    "user_txn_count_24h",
    "user_txn_count_7d",
    "user_amount_mean_7d",
    "user_amount_std_7d",
    "user_distinct_merchants_7d",
    "user_last_txn_unix",  # seconds since epoch of the previous transaction
    "user_last_country",
    "user_last_device",
)
MERCHANT_FEATURES: tuple[str, ...] = (
    "merchant_txn_count_24h",
    "merchant_amount_mean_7d",
    "merchant_chargeback_rate_30d",  # chargebacks *received* before t / transactions in the 30 d before t
)

# Values used when an entity is unknown (cold start) or a feature is null.
ENTITY_DEFAULTS: dict[str, float | str] = {
    "user_txn_count_1h": 0.0,
    "user_txn_count_24h": 0.0,
    "user_txn_count_7d": 0.0,
    "user_amount_mean_7d": 0.0,
    "user_amount_std_7d": 0.0,
    "user_distinct_merchants_7d": 0.0,
    "user_last_txn_unix": float("nan"),  # no previous transaction
    "user_last_country": "",
    "user_last_device": "",
    "merchant_txn_count_24h": 0.0,
    "merchant_amount_mean_7d": 0.0,
    "merchant_chargeback_rate_30d": 0.0,
}

# Request-time features, computed from the request and the entity features by the same package code
# in training and serving.
REQUEST_FEATURES: tuple[str, ...] = (
    "log_amount",
    "amount_zscore_user",
    "amount_ratio_user_mean",
    "log_seconds_since_last_txn",
    "country_changed",
    "device_changed",
    "is_new_user",
    "day_of_week",
)

NUMERIC_INPUTS: tuple[str, ...] = (
    "user_txn_count_1h",
    "user_txn_count_24h",
    "user_txn_count_7d",
    "user_amount_mean_7d",
    "user_amount_std_7d",
    "user_distinct_merchants_7d",
    "merchant_txn_count_24h",
    "merchant_amount_mean_7d",
    "merchant_chargeback_rate_30d",
    *REQUEST_FEATURES,
)

# Categorical inputs get embeddings; index 0 of every vocabulary is "unknown / out of vocabulary".
CATEGORICAL_INPUTS: dict[str, tuple[str, ...]] = {
    **CATEGORICAL_DOMAINS,
    "hour_of_day": tuple(str(h) for h in range(24)),
}

MODEL_INPUTS: tuple[str, ...] = (*NUMERIC_INPUTS, *CATEGORICAL_INPUTS)
LABEL = "label"  # 1 if a chargeback arrived by the label cut-off, else 0
