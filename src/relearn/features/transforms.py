"""Request-time feature code shared by training and serving, and the entity tables it reads.

:func:`model_inputs` turns raw request fields plus the entity features into exactly
:data:`~relearn.features.spec.MODEL_INPUTS`. It is the one request-time feature function: the training
set and the serving transformer both call it (the transformer through :func:`model_input_arrays`, its
formulas on plain columns), so the two cannot drift apart. The entity features come from
:func:`entity_feature_tables` (:mod:`relearn.features.entity_tables`, re-exported here with
:func:`epoch_us`): windowed per-entity tables, each row the entity just before a transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from relearn.features.entity_tables import entity_feature_tables, epoch_us
from relearn.features.spec import (
    CATEGORICAL_INPUTS,
    ENTITY_DEFAULTS,
    NUMERIC_INPUTS,
    USER_FEATURES,
)
from relearn.features.windows import (
    DAY_US,
    HISTORY_HORIZON,
    HOUR_US,
    WINDOWS,
)
from relearn.features.windows import US as _US

__all__ = [
    "NAT_US",
    "cold_start",
    "cold_start_mask",
    "entity_feature_tables",
    "epoch_us",
    "model_input_arrays",
    "model_inputs",
]

# model_inputs treats a previous transaction older than the horizon as "none", like Feast's TTL.
_HORIZON_S = HISTORY_HORIZON.total_seconds()

# Clip bounds keep request-time ratios finite for extreme amounts (data bugs, whales).
_ZSCORE_CLIP = 20.0
_RATIO_CLIP = 100.0


NAT_US = np.iinfo(np.int64).min  # a missing event time in ``event_time_us`` (pandas' NaT as int64)
_HOURS = np.array([str(h) for h in range(24)] + [""], dtype=object)  # index 24: no time
_TEXT_COLUMNS = ("country", "device_id", "user_last_country", "user_last_device")
_TEXT_COLUMNS += tuple(c for c in CATEGORICAL_INPUTS if c != "hour_of_day" and c not in _TEXT_COLUMNS)
_ENTITY = tuple(n for n in NUMERIC_INPUTS if n in ENTITY_DEFAULTS)  # the numeric entity features
_ENTITY_DEFAULTS = np.array([[ENTITY_DEFAULTS[n]] for n in _ENTITY])
_ROW = {name: i for i, name in enumerate(NUMERIC_INPUTS)}
assert NUMERIC_INPUTS[: len(_ENTITY)] == _ENTITY  # they lead the inputs: one block of rows
_NUMERIC_COLUMNS = ("amount", "user_last_txn_unix", *_ENTITY)


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64, NaN for missing (Feast may hand back Int64, object or None)."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as str with "" for missing; the model maps out-of-vocabulary values to index 0."""
    if column not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    values = frame[column].astype(object)
    return values.where(values.notna(), "").astype(str)


def model_input_arrays(columns: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The request-time feature formulas: the model inputs of ``n`` rows of plain columns.

    The one implementation behind :func:`model_inputs` (training, batch, skew) and the transformer, which
    calls it on its parsed request without a DataFrame (a few whole-array operations: tens of µs a row).
    ``columns``: ``event_time_us`` (int64 epoch µs, :data:`NAT_US` for none), float64 with NaN for missing
    (``amount``, numeric entity features), str with "" for missing (text fields); absent means missing.

    Returns:
        ``(numeric, categorical)``: float32 ``[n, len(NUMERIC_INPUTS)]`` without NaN (C order: the
        predictor's ``numeric`` tensor) and str ``[n, len(CATEGORICAL_INPUTS)]`` (object), in input order.
    """
    nan = np.full(n, np.nan)
    values = np.empty((len(NUMERIC_INPUTS), n))  # one row per numeric input, float64 until the end
    entity = values[: len(_ENTITY)]
    entity[:] = [columns.get(name, nan) for name in _ENTITY]
    np.copyto(entity, _ENTITY_DEFAULTS, where=np.isnan(entity))

    time_us = np.asarray(columns["event_time_us"], dtype=np.int64)
    no_time = time_us == NAT_US
    now = time_us / _US
    if no_time.any():
        now[no_time] = np.nan
    since_last = now - columns.get("user_last_txn_unix", nan)  # NaN: no (known) previous transaction
    # Windows the request time has fully left behind are zeroed (widths read now: tests patch WINDOWS).
    widths = np.array([WINDOWS[f] / _US if f in USER_FEATURES else np.inf for f in _ENTITY])
    entity[since_last >= widths[:, None]] = 0.0

    recent = since_last < _HORIZON_S  # False for NaN
    amount = columns.get("amount", nan)
    if not np.isfinite(amount).all():
        amount = np.nan_to_num(amount, nan=0.0)
    mean, std = entity[_ROW["user_amount_mean_7d"]], entity[_ROW["user_amount_std_7d"]]
    has_history = entity[_ROW["user_txn_count_7d"]] > 0
    # Without history, deviation from the user's habits is undefined: neutral values, is_new_user says why.
    zscore = np.where(has_history, (amount - mean) / (std + 1.0), 0.0)
    ratio = np.where(has_history, amount / (np.abs(mean) + 1.0), 1.0)
    seconds = np.where(recent, np.minimum(np.maximum(since_last, 0.0), _HORIZON_S), _HORIZON_S)

    def text(name: str) -> np.ndarray:
        return columns[name] if name in columns else np.full(n, "", dtype=object)

    country, device = text("country"), text("device_id")
    last_country, last_device = text("user_last_country"), text("user_last_device")
    values[_ROW["log_amount"]] = np.log1p(np.maximum(amount, 0.0))
    values[_ROW["amount_zscore_user"]] = np.minimum(np.maximum(zscore, -_ZSCORE_CLIP), _ZSCORE_CLIP)
    values[_ROW["amount_ratio_user_mean"]] = np.minimum(np.maximum(ratio, 0.0), _RATIO_CLIP)
    values[_ROW["log_seconds_since_last_txn"]] = np.log1p(seconds)
    values[_ROW["country_changed"]] = (
        recent & (last_country != "") & (country != "") & (country != last_country)
    )
    values[_ROW["device_changed"]] = recent & (last_device != "") & (device != "") & (device != last_device)
    values[_ROW["is_new_user"]] = ~has_history & ~recent
    # Calendar fields of the UTC time from integer µs (floor division: exact, also before 1970).
    values[_ROW["day_of_week"]] = np.where(no_time, 0, (time_us // DAY_US + 3) % 7)  # 1970-01-01: Thu (3)
    categorical = np.empty((n, len(CATEGORICAL_INPUTS)), dtype=object)
    for j, name in enumerate(CATEGORICAL_INPUTS):
        if name == "hour_of_day":
            categorical[:, j] = _HOURS[np.where(no_time, 24, (time_us // HOUR_US) % 24)]
        else:
            categorical[:, j] = text(name)
    return np.ascontiguousarray(values.T, dtype=np.float32), categorical


def model_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn request fields plus entity features into exactly ``MODEL_INPUTS``, in order.

    This is the request-time feature code of both the training set and the serving transformer (which
    calls :func:`model_input_arrays`, the formulas behind it, on plain columns). Missing or null entity
    features (cold start) take ``ENTITY_DEFAULTS``.

    Entity rows are the state at the entity's last update, which online can be older than the request.
    Windows the request time has fully left behind (``t - user_last_txn_unix >= w``) are zeroed, exactly
    as a row computed at ``t`` would have them; at training time, where rows are computed at ``t``, this
    changes nothing. A previous transaction older than :data:`HISTORY_HORIZON` counts as none, matching
    Feast's TTL.

    Args:
        frame: Rows with at least ``event_timestamp, amount, currency, merchant_category, channel,
            country, device_id`` and any of ``USER_FEATURES + MERCHANT_FEATURES``.

    Returns:
        A frame on ``frame.index`` with the ``MODEL_INPUTS`` columns: numeric float32 without NaN,
        categoricals as str.
    """
    ts = pd.Series(pd.to_datetime(frame["event_timestamp"], utc=True, errors="coerce"), index=frame.index)
    columns = {"event_time_us": ts.dt.as_unit("us").array.asi8}  # NaT is NAT_US
    columns.update({name: _numeric(frame, name) for name in _NUMERIC_COLUMNS})
    columns.update({name: _text(frame, name).to_numpy() for name in _TEXT_COLUMNS})
    numeric, categorical = model_input_arrays(columns, len(frame))
    out = pd.DataFrame(numeric, index=frame.index, columns=list(NUMERIC_INPUTS))
    for j, name in enumerate(CATEGORICAL_INPUTS):
        out[name] = categorical[:, j]
    return out


def cold_start(columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Rows whose user or merchant has no history (see :func:`cold_start_mask`), from plain columns.

    A user is cold without a previous transaction in the horizon; a merchant without a transaction in the
    last 7 days (its mean is undefined, so 0, and its 24 h count is 0). Missing features count as none.
    """
    nan = np.full(n, np.nan)
    count, mean = columns.get("merchant_txn_count_24h", nan), columns.get("merchant_amount_mean_7d", nan)
    merchant = ((count == 0) | np.isnan(count)) & ((mean == 0) | np.isnan(mean))
    return np.isnan(columns.get("user_last_txn_unix", nan)) | merchant


def cold_start_mask(frame: pd.DataFrame) -> pd.Series:
    """Rows whose user or merchant has no history: no features at all, or none of their events in reach."""
    names = ("user_last_txn_unix", "merchant_txn_count_24h", "merchant_amount_mean_7d")
    return pd.Series(cold_start({n: _numeric(frame, n) for n in names}, len(frame)), index=frame.index)
