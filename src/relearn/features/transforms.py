"""Feature code shared by training and serving.

Two layers:

* :func:`entity_feature_tables` turns raw transactions (and chargebacks) into the windowed per-entity
  tables that Feast serves. A row with ``event_timestamp`` ``s`` describes the entity over ``[s - w, s)``,
  i.e. *just before* a transaction at ``s``; a point-in-time join at a transaction's own time therefore
  never sees that transaction, anything later, or a chargeback not yet received.
* :func:`model_inputs` turns raw request fields plus those entity features into exactly
  :data:`~relearn.features.spec.MODEL_INPUTS`. It is the one request-time feature function: the training
  set and the serving transformer both call it, so the two cannot drift apart.

Rows are evaluated at every transaction time ``t`` (exact windows for the training join) and also at
``t + 1 µs`` (the state *including* ``t``, for serving: the online store keeps the latest row per entity,
and without this row it would lag one transaction behind). Merchants also get a row 1 µs after each
chargeback they receive, so a chargeback shows up online without waiting for the merchant's next sale.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from relearn.data import contract
from relearn.features.spec import (
    CATEGORICAL_INPUTS,
    ENTITY_DEFAULTS,
    MERCHANT_FEATURES,
    NUMERIC_INPUTS,
    USER_FEATURES,
)
from relearn.features.windows import (
    DAY_US,
    HISTORY_HORIZON,
    HOUR_US,
    WINDOWS,
    centred_sums,
    chargeback_rate,
    mean_std,
)
from relearn.features.windows import US as _US

# model_inputs treats a previous transaction older than the horizon as "none", like Feast's TTL.
_HORIZON_S = HISTORY_HORIZON.total_seconds()

# Clip bounds keep request-time ratios finite for extreme amounts (data bugs, whales).
_ZSCORE_CLIP = 20.0
_RATIO_CLIP = 100.0


def epoch_us(values: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
    """Timestamps (naive = UTC, tz-aware, or strings) as int64 epoch microseconds."""
    return pd.Series(pd.to_datetime(values, utc=True)).dt.as_unit("us").array.asi8


def _order(codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Indices sorting by (code, time): one int64 argsort when code and time pack into 62 bits."""
    if not len(codes):
        return np.arange(0)
    lo, span = int(times.min()), int(times.max()) - int(times.min()) + 1
    if (int(codes.max()) + 1) * span < 2**62:
        return np.argsort(codes.astype(np.int64) * span + (times - lo), kind="stable")
    return np.lexsort((times, codes))


class _Events:
    """Timed events of many entities, sorted by (entity code, time), counted before (entity, time).

    The lexicographic (code, time) order is encoded as one int64 key so that every windowed query over
    all entities is a single ``np.searchsorted``. The key is ``code * stride + time offset`` (query times
    clamped just outside the event range, which keeps every comparison); if that could overflow (huge
    spans x many entities), times are replaced by their rank among the distinct event times, which is
    exact too but slower.
    """

    def __init__(self, codes: np.ndarray, times: np.ndarray) -> None:
        self.order = _order(codes, times)
        self.codes = codes[self.order].astype(np.int64)
        self.times = times[self.order]
        self._lo = int(times.min()) if len(times) else 0
        self._span = (int(times.max()) - self._lo + 1) if len(times) else 1
        max_code = int(codes.max()) + 1 if len(codes) else 1
        self._distinct = None if max_code * (self._span + 2) < 2**62 else np.unique(self.times)
        self._keys = self._key(self.codes, self.times)

    def _key(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        if self._distinct is None:
            return codes * (self._span + 2) + np.clip(times - self._lo, -1, self._span) + 1
        # rank(t) = #distinct event times < t; an event time e satisfies e < t iff rank(e) < rank(t).
        return codes * (len(self._distinct) + 1) + np.searchsorted(self._distinct, times, side="left")

    def before(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Per query: index of the first event of ``code`` at or after ``time`` (= #events sorting before)."""
        return np.searchsorted(self._keys, self._key(codes, times), side="left")

    def window(self, codes: np.ndarray, times: np.ndarray, width_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Index range ``[start, end)`` of each entity's events in ``[time - width, time)``."""
        return self.before(codes, times - width_us), self.before(codes, times)


def _queries(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (code, time) evaluation points, sorted."""
    codes = np.concatenate([c for c, _ in parts]).astype(np.int64)
    times = np.concatenate([t for _, t in parts])
    order = _order(codes, times)
    codes, times = codes[order], times[order]
    keep = np.ones(len(codes), dtype=bool)
    keep[1:] = (codes[1:] != codes[:-1]) | (times[1:] != times[:-1])
    return codes[keep], times[keep]


def _group_prefix(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Inclusive prefix sums restarted at every entity (``codes`` sorted), so they stay the entity's size."""
    return pd.Series(values).groupby(codes, sort=False).cumsum().to_numpy(dtype=np.float64)


def _window_sum(inclusive: np.ndarray, values: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Sum of ``values[start:end]`` per range, from per-entity prefix sums (a range is in one entity)."""
    if not len(values):
        return np.zeros(len(start))
    last = np.clip(end - 1, 0, None)
    first = np.clip(start, 0, len(values) - 1)
    total = inclusive[last] - (inclusive[first] - values[first])
    return np.where(end > start, total, 0.0)


def _mean_std(
    amounts: np.ndarray, codes: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std of the non-null amounts in each index range; 0 where undefined.

    Amounts are centred on their entity's mean and summed with prefix sums restarted per entity: the sums
    stay the size of one entity's history, so the sum-of-squares cancellation error stays at the level of
    a direct sum over the window (what the streaming state computes) — equal to ~1e-12 relative.
    """
    valid = ~np.isnan(amounts)
    group = pd.Series(np.where(valid, amounts, 0.0)).groupby(codes, sort=False)
    counts = pd.Series(valid.astype(np.float64)).groupby(codes, sort=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.nan_to_num(group.transform("sum").to_numpy() / counts.transform("sum").to_numpy())
    x = np.where(valid, amounts - centres, 0.0)
    n = _window_sum(_group_prefix(valid.astype(np.float64), codes), valid.astype(np.float64), start, end)
    s = _window_sum(_group_prefix(x, codes), x, start, end)
    prefix_ss = _group_prefix(x * x, codes)
    ss = _window_sum(prefix_ss, x * x, start, end)
    centre = centres[np.clip(start, 0, max(len(centres) - 1, 0))] if len(centres) else np.zeros(len(start))
    # Nearly equal amounts: ss - s²/n cancels against the prefix sums' size. Those few windows are summed
    # directly, as the streaming state sums every window.
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = ss - np.where(n > 0, s * s / n, 0.0)
    size = prefix_ss[np.clip(end - 1, 0, None)] if len(prefix_ss) else np.zeros(len(end))
    for i in np.flatnonzero((n > 1) & (spread < 1e-6 * size)):
        n[i], s[i], ss[i], centre[i] = centred_sums(amounts[start[i] : end[i]])
    return mean_std(n, s, ss, centre)


def _distinct_in_window(
    events: _Events, other: np.ndarray, codes: np.ndarray, times: np.ndarray, width_us: int
) -> np.ndarray:
    """Distinct values of ``other`` (e.g. merchant codes) among each entity's events in ``[t - w, t)``.

    A (entity, value) pair is in the window of t iff one of its events e has t in (e, e + w]. Clipping each
    event's interval at the pair's next event makes the intervals disjoint, so the distinct count is
    #interval starts before t minus #interval ends before t: two sorted 1-D counts, no loop.
    """
    pair = events.codes * (int(other.max()) + 1 if len(other) else 1) + other
    by_pair = _order(pair, events.times)
    next_time = np.full(len(pair), np.iinfo(np.int64).max, dtype=np.int64)
    same = pair[by_pair][1:] == pair[by_pair][:-1]
    next_time[by_pair[:-1][same]] = events.times[by_pair][1:][same]
    ends = _Events(events.codes, np.minimum(events.times + width_us, next_time))
    return events.before(codes, times) - ends.before(codes, times)


def _transactions_frame(transactions: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows with their entities and time, and which of them hold to the data contract.

    Only those make an entity's history: serving refuses the others (the transformer, the feed), so they are
    in no window online, and none offline. A chargeback still counts for its transaction's merchant (the
    feed takes it with the merchant), so every row maps chargebacks to merchants.
    """
    tx = transactions[["transaction_id", "event_timestamp", "user_id", "merchant_id", "amount", "country"]]
    tx = tx.assign(device_id=transactions.get("device_id"))
    keep = (tx["user_id"].notna() & tx["merchant_id"].notna() & tx["event_timestamp"].notna()).to_numpy()
    masks = contract.frame_masks(transactions)
    broken = np.logical_or.reduce(list(masks.values())) if masks else np.zeros(len(tx), dtype=bool)
    return tx[keep], ~broken[keep]


def _user_table(tx: pd.DataFrame, times: np.ndarray, amounts: np.ndarray) -> pd.DataFrame:
    user_codes, users = pd.factorize(tx["user_id"], sort=False)
    merchant_codes, _ = pd.factorize(tx["merchant_id"], sort=False)
    ev = _Events(user_codes, times)
    qc, qt = _queries((ev.codes, ev.times), (ev.codes, ev.times + 1))

    out: dict[str, object] = {}
    for name in ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d"):
        start, end = ev.window(qc, qt, WINDOWS[name])
        out[name] = end - start
    start, end = ev.window(qc, qt, WINDOWS["user_amount_mean_7d"])
    assert WINDOWS["user_amount_std_7d"] == WINDOWS["user_amount_mean_7d"]  # one pass serves both
    out["user_amount_mean_7d"], out["user_amount_std_7d"] = _mean_std(amounts[ev.order], ev.codes, start, end)
    width = WINDOWS["user_distinct_merchants_7d"]
    out["user_distinct_merchants_7d"] = _distinct_in_window(ev, merchant_codes[ev.order], qc, qt, width)

    # The previous transaction: the last of the user's events in [t - horizon, t), if any.
    start, end = ev.window(qc, qt, WINDOWS["user_last_txn_unix"])
    has_last = end > start
    last = np.clip(end - 1, 0, None)
    out["user_last_txn_unix"] = np.where(has_last, ev.times[last] / _US, np.nan)
    for column, feature in (("country", "user_last_country"), ("device_id", "user_last_device")):
        values = tx[column].to_numpy(dtype=object)[ev.order][last]
        out[feature] = np.where(has_last, values, None)
    return _entity_frame("user_id", users, qc, qt, out, USER_FEATURES)


def _merchant_table(
    tx: pd.DataFrame, valid: np.ndarray, labels: pd.DataFrame, times: np.ndarray, amounts: np.ndarray
) -> pd.DataFrame:
    merchant_codes, merchants = pd.factorize(tx["merchant_id"], sort=False)
    ev = _Events(merchant_codes[valid], times)

    # Chargebacks received, attributed to the merchant of the charged-back transaction. Labels with
    # is_fraud False (disputes found legitimate) are not fraud signal; duplicates keep the first.
    cb = labels.loc[labels["is_fraud"].fillna(False).astype(bool), ["transaction_id", "chargeback_timestamp"]]
    cb = cb.sort_values("chargeback_timestamp").drop_duplicates("transaction_id")
    code_of = pd.Series(merchant_codes, index=tx["transaction_id"].to_numpy())
    code_of = code_of[~code_of.index.duplicated()]
    cb_codes = code_of.reindex(cb["transaction_id"].to_numpy())
    known = cb_codes.notna().to_numpy()
    cb_ev = _Events(cb_codes.to_numpy()[known].astype(np.int64), epoch_us(cb["chargeback_timestamp"])[known])

    qc, qt = _queries((ev.codes, ev.times), (ev.codes, ev.times + 1), (cb_ev.codes, cb_ev.times + 1))
    start, end = ev.window(qc, qt, WINDOWS["merchant_txn_count_24h"])
    out: dict[str, object] = {"merchant_txn_count_24h": end - start}
    start, end = ev.window(qc, qt, WINDOWS["merchant_amount_mean_7d"])
    out["merchant_amount_mean_7d"] = _mean_std(amounts[ev.order], ev.codes, start, end)[0]
    width = WINDOWS["merchant_chargeback_rate_30d"]
    start, end = ev.window(qc, qt, width)
    cb_start, cb_end = cb_ev.window(qc, qt, width)
    out["merchant_chargeback_rate_30d"] = chargeback_rate(cb_end - cb_start, end - start)
    return _entity_frame("merchant_id", merchants, qc, qt, out, MERCHANT_FEATURES)


def _entity_frame(
    key: str, ids: pd.Index, codes: np.ndarray, times: np.ndarray, features: dict, names: tuple[str, ...]
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            key: ids.to_numpy(dtype=object)[codes],
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True).as_unit("us"),
        }
    )
    for name in names:
        frame[name] = features[name]
    return frame


def entity_feature_tables(
    transactions: pd.DataFrame, labels: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute the per-entity feature tables served by Feast.

    Args:
        transactions: Rows following ``TRANSACTION_SCHEMA``, any order. Rows that break the data contract
            (:mod:`relearn.data.contract`: no amount, a negative one, an unknown currency, ...) are in no
            entity's history: serving refuses them, so the streaming state never counts them either.
        labels: Chargebacks following ``LABEL_SCHEMA``; only ``chargeback_timestamp`` decides when a label
            becomes known.

    Returns:
        ``(users, merchants)``: ``user_id, event_timestamp, *USER_FEATURES`` and
        ``merchant_id, event_timestamp, *MERCHANT_FEATURES``, one row per entity and evaluation time,
        grouped by entity and time-ordered within. Windows are ``[t - w, t)``. Counts are int64, the rest
        float64 (``user_last_txn_unix`` NaN when there is no previous transaction) or object strings.
    """
    tx, valid = _transactions_frame(transactions)
    served = tx[valid]
    times = epoch_us(served["event_timestamp"])
    amounts = pd.to_numeric(served["amount"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return _user_table(served, times, amounts), _merchant_table(tx, valid, labels, times, amounts)


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
