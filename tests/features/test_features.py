"""Features: exact windows, no leakage, offline == online, cold start, Feast config."""

from __future__ import annotations

import math
import runpy

import numpy as np
import pandas as pd
import pytest
import yaml

from relearn.features import store as fstore
from relearn.features.spec import (
    CATEGORICAL_INPUTS,
    FEATURE_SERVICE,
    LABEL,
    MERCHANT_FEATURES,
    MODEL_INPUTS,
    NUMERIC_INPUTS,
    USER_FEATURES,
)
from relearn.features.transforms import cold_start_mask, entity_feature_tables, model_inputs
from relearn.settings import RelearnSettings
from support.frames import MIN, T0, world
from support.frames import chargebacks as _labels
from support.frames import transactions as _tx

NO_HISTORY = math.log1p(30 * 86400)


def random_world(n: int = 400, seed: int = 0, days: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    times = T0 + pd.to_timedelta(rng.integers(0, days * 86400, n), unit="s")
    fraud = rng.random(n) < 0.15
    tx = _tx(
        list(
            zip(
                [f"t{i}" for i in range(n)],
                times,
                [f"u{i}" for i in rng.integers(0, 12, n)],
                [f"m{i}" for i in rng.integers(0, 5, n)],
                np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(3, 1, n).round(2)),
                rng.choice(["DE", "FR", "NL"], n),
                rng.choice(["d1", "d2", "d3"], n),
                fraud,
                strict=True,
            )
        )
    )
    delays = pd.to_timedelta(rng.integers(1, 12 * 86400, int(fraud.sum())), unit="s")
    labels = _labels(
        list(zip(tx["transaction_id"][fraud], tx["event_timestamp"][fraud] + delays, strict=True))
    )
    return tx, labels


@pytest.fixture
def settings(tmp_path) -> RelearnSettings:
    return RelearnSettings(home=tmp_path)


def _store(tx, labels, settings):
    fstore.write_feature_tables(tx, labels, settings)
    store = fstore.get_store(settings)
    fstore.apply(store, settings)
    return store


# --- transforms -------------------------------------------------------------------------------------


def test_entity_tables_match_brute_force():
    tx, labels = random_world()
    users, merchants = entity_feature_tables(tx, labels)
    assert list(users.columns) == ["user_id", "event_timestamp", *USER_FEATURES]
    assert list(merchants.columns) == ["merchant_id", "event_timestamp", *MERCHANT_FEATURES]
    assert not users.duplicated(["user_id", "event_timestamp"]).any()
    kinds = {"Int64": "int64", "Float64": "float64", "String": "object"}
    for table in (users, merchants):
        for column in table.columns[2:]:
            assert str(table[column].dtype) == kinds[str(fstore.FEATURE_TYPES[column])], column
    chargebacks = labels.merge(tx[["transaction_id", "merchant_id"]])
    tx = tx[tx.amount.notna()]  # a row without an amount breaks the data contract: in no history
    for row in users.itertuples():
        t, past = (
            row.event_timestamp,
            tx[(tx.user_id == row.user_id) & (tx.event_timestamp < row.event_timestamp)],
        )
        for name, width in (("1h", "1h"), ("24h", "24h"), ("7d", "7D")):
            assert (
                getattr(row, f"user_txn_count_{name}")
                == (past.event_timestamp >= t - pd.Timedelta(width)).sum()
            )
        week = past[past.event_timestamp >= t - pd.Timedelta("7D")]
        amounts = week.amount.dropna()
        assert row.user_amount_mean_7d == pytest.approx(amounts.mean() if len(amounts) else 0.0)
        assert row.user_amount_std_7d == pytest.approx(amounts.std() if len(amounts) > 1 else 0.0, abs=1e-9)
        assert row.user_distinct_merchants_7d == week.merchant_id.nunique()
        if len(past):
            assert row.user_last_txn_unix == past.event_timestamp.max().timestamp()
        else:
            assert math.isnan(row.user_last_txn_unix)
    for row in merchants.itertuples():
        t = row.event_timestamp
        past = tx[(tx.merchant_id == row.merchant_id) & (tx.event_timestamp < t)]
        assert row.merchant_txn_count_24h == (past.event_timestamp >= t - pd.Timedelta("24h")).sum()
        amounts = past[past.event_timestamp >= t - pd.Timedelta("7D")].amount.dropna()
        assert row.merchant_amount_mean_7d == pytest.approx(amounts.mean() if len(amounts) else 0.0)
        month = (past.event_timestamp >= t - pd.Timedelta("30D")).sum()
        received = chargebacks[
            (chargebacks.merchant_id == row.merchant_id)
            & (chargebacks.chargeback_timestamp < t)
            & (chargebacks.chargeback_timestamp >= t - pd.Timedelta("30D"))
        ]
        assert row.merchant_chargeback_rate_30d == pytest.approx(
            min(len(received) / month, 1) if month else 0
        )


def test_window_edges_and_same_instant():
    tx, labels = world()
    users, merchants = entity_feature_tables(tx, labels)
    at = users.set_index(["user_id", "event_timestamp"])
    a3 = at.loc[("u1", T0 + 60 * MIN)]
    assert (a3.user_txn_count_1h, a3.user_txn_count_24h) == (
        2,
        2,
    )  # a1 at exactly t - 1 h is inside [t-1h, t)
    a4 = at.loc[("u1", T0 + 120 * MIN)]  # shared by a4 and a5: neither sees the other
    assert (a4.user_txn_count_1h, a4.user_txn_count_7d) == (1, 3)  # a2 at t - 90 min is out of the hour
    assert a4.user_amount_mean_7d == pytest.approx(20.0)
    assert a4.user_last_txn_unix == (T0 + 60 * MIN).timestamp()
    # The row 1 µs after a5 is the state including both: what serving reads once materialized.
    after = at.loc[("u1", T0 + 120 * MIN + pd.Timedelta(microseconds=1))]
    assert after.user_txn_count_7d == 5 and after.user_last_country == "FR"
    # A merchant gets a row right after a chargeback arrives.
    m1 = merchants.set_index(["merchant_id", "event_timestamp"])
    assert m1.loc[
        ("m1", T0 + 90 * MIN + pd.Timedelta(microseconds=1))
    ].merchant_chargeback_rate_30d == pytest.approx(1 / 3)


@pytest.mark.parametrize(("field", "value"), [("amount", np.nan), ("amount", -5.0), ("currency", "XXX")])
def test_rows_breaking_the_contract_are_in_no_history(field, value):
    """Serving refuses them (transformer, feed): the streaming state never counts them, nor does training."""
    tx, labels = world()
    tx.loc[tx.transaction_id == "a2", field] = value
    users, merchants = entity_feature_tables(tx, labels)
    a3 = users[(users.user_id == "u1") & (users.event_timestamp == T0 + 60 * MIN)].iloc[0]
    assert a3.user_txn_count_7d == 1 and a3.user_distinct_merchants_7d == 1  # a1 only: a2 (m2) is not there
    assert a3.user_amount_mean_7d == pytest.approx(10.0)
    m2 = merchants[merchants.merchant_id == "m2"]
    assert m2.empty or (m2.merchant_txn_count_24h == 0).all()


def test_null_amounts_do_not_crash():
    tx, _ = world()
    frame = tx.assign(amount=np.nan)
    out = model_inputs(frame)
    assert not out[list(NUMERIC_INPUTS)].isna().any().any()
    assert (out["log_amount"] == 0).all()


def test_model_inputs_cold_start_and_calendar():
    request = pd.DataFrame(
        {
            "event_timestamp": ["2024-03-04T23:30:00-02:00", "2024-03-10T00:00:00Z"],  # Tue 01:30 UTC; Sun
            "amount": [100.0, 5.0],
            "currency": ["EUR", None],
            "merchant_category": ["travel", "not-a-category"],
            "channel": ["ecommerce", "pos"],
            "country": ["FR", "DE"],
            "device_id": ["d1", None],
        }
    )
    # Feast hands back unknown entities as all-None object columns.
    frame = pd.concat(
        [request, pd.DataFrame({n: [None, None] for n in (*USER_FEATURES, *MERCHANT_FEATURES)})], axis=1
    )
    for candidate in (request, frame):
        out = model_inputs(candidate)
        assert list(out.columns) == list(MODEL_INPUTS)
        assert not out[list(NUMERIC_INPUTS)].isna().any().any()
        assert all(out[n].dtype == np.float32 for n in NUMERIC_INPUTS)
        assert out["hour_of_day"].tolist() == ["1", "0"]
        assert out["day_of_week"].tolist() == [1.0, 6.0]
        assert out["is_new_user"].tolist() == [1.0, 1.0]
        assert out["log_seconds_since_last_txn"].tolist() == pytest.approx([NO_HISTORY] * 2)
        assert out["amount_zscore_user"].tolist() == [0.0, 0.0]
        assert out["currency"].tolist() == ["EUR", ""]
        assert out["merchant_category"].tolist() == ["travel", "not-a-category"]
        assert set(out["hour_of_day"]) <= set(CATEGORICAL_INPUTS["hour_of_day"])
        assert cold_start_mask(candidate).all()


# --- Feast ------------------------------------------------------------------------------------------


def test_training_set_has_no_leakage(settings):
    tx, labels = world()
    store = _store(tx, labels, settings)
    cutoff = T0 + pd.Timedelta(days=5)
    train = fstore.training_set(store, tx, labels, cutoff.to_pydatetime())
    assert train["event_timestamp"].is_monotonic_increasing and len(train) == len(tx)
    assert list(train.columns) == [*[c for c in fstore.TRAINING_COLUMNS], *MODEL_INPUTS, LABEL]
    row = train.set_index("transaction_id")

    assert row.loc["a1", "is_new_user"] == 1 and row.loc["a1", "user_txn_count_7d"] == 0
    # a3 sees a1 and a2 only; the huge later amounts never leak backwards.
    assert row.loc["a3", ["user_txn_count_1h", "user_txn_count_7d"]].tolist() == [2, 2]
    assert row.loc["a3", "user_amount_mean_7d"] == pytest.approx(15.0)
    assert row.loc["a3", "user_amount_std_7d"] == pytest.approx(math.sqrt(50.0))
    assert row.loc["a3", "user_distinct_merchants_7d"] == 2
    assert row.loc["a3", "log_seconds_since_last_txn"] == pytest.approx(math.log1p(1800))
    # a4 and a5 share a timestamp: neither sees the other.
    for tid in ("a4", "a5"):
        assert row.loc[tid, "user_txn_count_7d"] == 3
        assert row.loc[tid, "user_amount_mean_7d"] == pytest.approx(20.0)
        assert row.loc[tid, "log_seconds_since_last_txn"] == pytest.approx(math.log1p(3600))
        assert row.loc[tid, ["country_changed", "device_changed"]].tolist() == [1, 1]
    assert row.loc["a6", "user_txn_count_7d"] == 5 and row.loc["a6", "user_txn_count_24h"] == 0
    # Chargebacks count only once received: a1's (t0+90 min) is unknown at a3, known at a4;
    # b1's (t0+10 d) is unknown even at a6.
    assert row.loc["a3", "merchant_chargeback_rate_30d"] == 0.0
    assert row.loc["a4", "merchant_chargeback_rate_30d"] == pytest.approx(1 / 3)
    assert row.loc["a6", "merchant_chargeback_rate_30d"] == pytest.approx(1 / 5)
    # Labels as of the cut-off: b1 is fraud, but its chargeback comes later.
    assert row[LABEL].to_dict() == {"a1": 1, "b1": 0, "a2": 0, "a3": 0, "a4": 0, "a5": 0, "a6": 0}

    # Generic: every user count equals the number of strictly earlier transactions in the window.
    for r in train.itertuples():
        past = tx[(tx.user_id == r.user_id) & (tx.event_timestamp < r.event_timestamp)]
        assert r.user_txn_count_7d == (past.event_timestamp >= r.event_timestamp - pd.Timedelta("7D")).sum()


def test_pandas_join_equals_feast_get_historical_features(settings):
    tx, labels = random_world(n=300, days=12)
    store = _store(tx, labels, settings)
    requests = tx.sample(120, random_state=1).copy()
    requests["event_timestamp"] += pd.to_timedelta(np.random.default_rng(2).integers(0, 5 * 86400, 120), "s")
    requests.loc[requests.index[:3], "user_id"] = "nobody"  # unknown entity: null features, kept
    ours = fstore.historical_features(store, requests)
    feast = fstore.historical_features(store, requests, engine="feast")
    assert ours["user_txn_count_7d"].notna().sum() == 117
    pd.testing.assert_frame_equal(model_inputs(ours), model_inputs(feast))
    pd.testing.assert_series_equal(cold_start_mask(ours), cold_start_mask(feast))


def test_online_equals_offline(settings):
    tx, labels = world()
    store = _store(tx, labels, settings)
    last = tx["event_timestamp"].max()
    fstore.materialize(store, (last + pd.Timedelta(seconds=1)).to_pydatetime())

    pairs = [("u1", "m1"), ("u2", "m1"), ("u1", "m2"), ("ghost", "m1"), ("u2", "nowhere")]
    requests = pd.DataFrame(
        {
            "transaction_id": [f"r{i}" for i in range(len(pairs))],
            # Distinct times: Feast's file store drops entity rows sharing an entity key and timestamp.
            "event_timestamp": [last + 10 * MIN + pd.Timedelta(seconds=i) for i in range(len(pairs))],
            "user_id": [u for u, _ in pairs],
            "merchant_id": [m for _, m in pairs],
            "amount": [80.0, 12.0, 3.0, 40.0, 7.0],
            "currency": "EUR",
            "merchant_category": "grocery",
            "channel": "pos",
            "country": ["FR", "DE", "FR", "DE", "DE"],
            "device_id": ["d2", "d9", "d3", "d1", "d9"],
        },
        index=[10, 11, 12, 13, 14],
    )
    online = fstore.online_features(store, requests)
    before = online.copy()
    online_inputs = model_inputs(online)
    pd.testing.assert_frame_equal(online, before)  # model_inputs does not write into its input
    pd.testing.assert_frame_equal(online_inputs, fstore.online_model_inputs(store, requests))
    for engine in ("pandas", "feast"):
        offline = fstore.historical_features(store, requests, engine=engine)
        pd.testing.assert_frame_equal(online_inputs, model_inputs(offline), check_exact=False, atol=1e-5)
    assert cold_start_mask(online).tolist() == [False, False, False, True, True]
    assert list(online_inputs.index) == list(requests.index)

    # The online row already includes u1's latest transaction (a6) and the received chargeback of a1.
    u1 = online_inputs.loc[10]
    assert u1["user_txn_count_7d"] == 6 and u1["log_seconds_since_last_txn"] == pytest.approx(math.log1p(600))
    assert u1["user_amount_mean_7d"] == pytest.approx(21060 / 6)
    assert u1["merchant_chargeback_rate_30d"] == pytest.approx(1 / 6)
    # u2's only transaction was 3 days ago: windows it has left are zeroed, as a row at t would have them.
    u2 = online_inputs.loc[11]
    assert (u2["user_txn_count_1h"], u2["user_txn_count_24h"], u2["user_txn_count_7d"]) == (0, 0, 1)
    assert online_inputs.loc[13, "is_new_user"] == 1


def test_store_config_local_and_redis(tmp_path):
    local = RelearnSettings(home=tmp_path / "a")
    repo = fstore.write_repo(local)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["online_store"] == {"type": "sqlite", "path": str(repo / "data" / "online.db")}
    assert config["offline_store"] == {"type": "file"} and config["entity_key_serialization_version"] == 3
    assert fstore.repo_config(local).registry.path == local.registry()

    redis = RelearnSettings(
        home=tmp_path / "b", feast_online_store="redis", feast_redis_connection="redis:6379,db=1"
    )
    config = yaml.safe_load((fstore.write_repo(redis) / "feature_store.yaml").read_text())
    assert config["online_store"] == {"type": "redis", "connection_string": "redis:6379,db=1"}


def test_cli_definitions_module(settings):
    repo = fstore.write_repo(settings)
    names = {
        type(o).__name__ + ":" + o.name
        for o in runpy.run_path(str(repo / fstore.DEFINITIONS_MODULE)).values()
        if hasattr(o, "name") and type(o).__module__.startswith("feast")
    }
    assert {"FeatureService:" + FEATURE_SERVICE, "FeatureView:user_features", "Entity:merchant"} <= names
