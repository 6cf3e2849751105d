"""The pandas engine of the entity features: windowed per-entity tables from raw transactions.

:func:`entity_feature_tables` turns raw transactions (and chargebacks) into the windowed per-entity tables
that Feast serves. A row with ``event_timestamp`` ``s`` describes the entity over ``[s - w, s)``, i.e.
*just before* a transaction at ``s``; a point-in-time join at a transaction's own time therefore never
sees that transaction, anything later, or a chargeback not yet received. The windows and their formulas
are :mod:`relearn.features.windows`' (shared with Spark and the streaming state).

Rows are evaluated at every transaction time ``t`` (exact windows for the training join) and also at
``t + 1 µs`` (the state *including* ``t``, for serving: the online store keeps the latest row per entity,
and without this row it would lag one transaction behind). Merchants also get a row 1 µs after each
chargeback they receive, so a chargeback shows up online without waiting for the merchant's next sale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relearn.data import contract
from relearn.features.spec import MERCHANT_FEATURES, USER_FEATURES
from relearn.features.windows import US as _US
from relearn.features.windows import WINDOWS, centred_sums, chargeback_rate, mean_std


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
