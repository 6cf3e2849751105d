"""The card-transaction schema: column names, types and categorical domains.

Every other part of relearn (generator, validation, features, serving) reads its column names and
domains from here, so a new category is added in exactly one place.
"""

from __future__ import annotations

import pyarrow as pa

MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "transport",
    "travel",
    "electronics",
    "fashion",
    "digital_goods",
    "gambling",
    "pharmacy",
    "utilities",
    "entertainment",
    "cash_withdrawal",
)
CHANNELS: tuple[str, ...] = ("pos", "contactless", "ecommerce", "atm")
COUNTRIES: tuple[str, ...] = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE", "US", "BR", "NG", "RU", "CN")
CURRENCIES: tuple[str, ...] = ("EUR", "GBP", "USD", "PLN", "SEK")

# Ground truth of the synthetic world, for analysis only: never a model input, never sent to serving.
FRAUD_PATTERNS: tuple[str, ...] = (
    "none",
    "card_testing",
    "account_takeover",
    "compromised_merchant",
    "bust_out",  # the new pattern of the concept-drift scenario
)

TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64()),  # in major units of `currency`
        pa.field("currency", pa.string()),
        pa.field("merchant_category", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("country", pa.string()),  # where the transaction happens (merchant / terminal country)
        pa.field("device_id", pa.string()),  # the user's device or wallet token; a new one hints at takeover
        pa.field("is_fraud", pa.bool_(), nullable=False),  # ground truth, hidden from the model
        pa.field("fraud_pattern", pa.string(), nullable=False),  # ground truth, one of FRAUD_PATTERNS
    ]
)

# Chargebacks arrive days after the transaction; the only labels a real system ever sees.
LABEL_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("chargeback_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
    ]
)

# Fields a client sends to the prediction endpoint (the raw request, before features). What each must hold
# (required, ranges, these domains) is the data contract, relearn.data.contract, every consumer enforces.
REQUEST_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "event_timestamp",
    "user_id",
    "merchant_id",
    "amount",
    "currency",
    "merchant_category",
    "channel",
    "country",
    "device_id",
)

CATEGORICAL_DOMAINS: dict[str, tuple[str, ...]] = {
    "merchant_category": MERCHANT_CATEGORIES,
    "channel": CHANNELS,
    "country": COUNTRIES,
    "currency": CURRENCIES,
}

TRANSACTIONS_DIR = "transactions"  # <root>/transactions/date=YYYY-MM-DD/*.parquet
LABELS_DIR = "labels"  # <root>/labels/date=YYYY-MM-DD/*.parquet, partitioned by chargeback date
