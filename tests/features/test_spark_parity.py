"""The Spark engine equals the pandas engine row for row: entity tables, training set, the whole step.

A real local Spark (pyspark from PyPI, Java from Debian), one session for the whole test run, local[2]
and two shuffle partitions: small data keeps these tests within CI's budget. Counts must be equal, floats
within 1e-9 relative; a window boundary moved in one engine only must make the comparison fail.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from relearn import steps
from relearn.data import generator, io
from relearn.data.spark_session import SparkSettings, spark_available
from relearn.features import store as fstore
from relearn.features.transforms import entity_feature_tables
from relearn.features.windows import HOUR_US, WINDOWS
from support.crds import in_ci
from support.frames import world as edge_world

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 21
RTOL = 1e-9


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every Spark test (starting a JVM costs seconds)."""
    if not spark_available():
        if in_ci():
            pytest.fail("pyspark or Java missing: `make setup` installs both")
        pytest.skip("pyspark or Java missing: `make setup` installs both")
    from relearn.data.spark_session import spark_session

    session = spark_session(SparkSettings(master="local[2]", shuffle_partitions=2, driver_memory="1g"))
    yield session
    session.stop()


def _world() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A drifting world (a fraud campaign from mid-window: bursts, compromised merchants) with late
    chargebacks, plus hand-made edges: events on a window's edge, two at one instant, rows that break
    the data contract, a duplicated transaction id and a duplicated chargeback."""
    config = generator.GeneratorConfig(
        start=START, days=DAYS, n_users=60, n_merchants=20, seed=4, scenario="label_shift"
    )
    data = generator.generate(config)
    edges, edge_labels = edge_world()
    tx = pd.concat([data.transactions, edges], ignore_index=True)
    broken = tx.iloc[:4].copy()
    broken["transaction_id"] = [f"bad{i}" for i in range(4)]
    broken["amount"] = [-5.0, np.nan, 1e9, 20.0]
    broken["currency"] = ["EUR", "EUR", "EUR", "XXX"]  # all four break the contract: in no history
    dup = tx.iloc[[10]].assign(event_timestamp=tx["event_timestamp"].iloc[10] + pd.Timedelta(minutes=5))
    tx = pd.concat([tx, broken, dup], ignore_index=True)
    labels = pd.concat([data.labels, edge_labels, data.labels.iloc[:3]], ignore_index=True)
    # As io.read_transactions returns the lake: µs UTC times, sorted by time (stable).
    tx["event_timestamp"] = tx["event_timestamp"].astype("datetime64[us, UTC]")
    labels["chargeback_timestamp"] = labels["chargeback_timestamp"].astype("datetime64[us, UTC]")
    tx = tx.sort_values("event_timestamp", kind="stable", ignore_index=True)
    return tx, labels


@pytest.fixture(scope="module")
def world():
    return _world()


def mismatches(expected: pd.DataFrame, got: pd.DataFrame, keys: list[str]) -> dict[str, int]:
    """Columns whose values differ (count of rows): ints and strings exactly, floats within RTOL."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    expected = expected.sort_values(keys, ignore_index=True)
    got = got.sort_values(keys, ignore_index=True)
    out = {}
    for name in expected.columns:
        a, b = expected[name], got[name]
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        if a.dtype.kind == "f":
            same = np.isclose(a.to_numpy(), b.to_numpy(), rtol=RTOL, atol=0.0, equal_nan=True)
        else:
            same = (a.isna().to_numpy() & b.isna().to_numpy()) | (a == b).to_numpy()
        if not same.all():
            out[name] = int((~same).sum())
    return out


def spark_tables(spark, tx, labels):
    from relearn.features import spark_engine as se

    users, merchants = se.entity_feature_tables(
        spark.createDataFrame(se.with_order(tx)), spark.createDataFrame(labels)
    )
    return se.to_pandas(users), se.to_pandas(merchants)


def test_entity_tables_equal_row_for_row(spark, world):
    tx, labels = world
    users, merchants = entity_feature_tables(tx, labels)
    s_users, s_merchants = spark_tables(spark, tx, labels)
    assert mismatches(users, s_users[list(users.columns)], ["user_id", "event_timestamp"]) == {}
    assert (
        mismatches(merchants, s_merchants[list(merchants.columns)], ["merchant_id", "event_timestamp"]) == {}
    )
    # The world exercises what it claims: history, chargebacks within 30 days, distinct merchants > 1.
    assert (users["user_distinct_merchants_7d"] > 1).any() and (users["user_amount_std_7d"] > 0).any()
    assert (merchants["merchant_chargeback_rate_30d"] > 0).any()


def test_a_moved_window_boundary_breaks_parity(spark, world, monkeypatch):
    """The comparison is sharp: the 1 h window 1 µs wider in Spark only shows up as count differences."""
    from relearn.features import spark_engine

    tx, labels = world
    users, _ = entity_feature_tables(tx, labels)
    wider = {**WINDOWS, "user_txn_count_1h": HOUR_US + 1}  # [t - 1h - 1µs, t): an edge event joins
    monkeypatch.setattr(spark_engine, "WINDOWS", wider)
    s_users, _ = spark_tables(spark, tx, labels)
    # The edge world's rows 1 µs after a3 and after a4/a5 have an event exactly 1 h + 1 µs before them.
    assert mismatches(users, s_users[list(users.columns)], ["user_id", "event_timestamp"]) == {
        "user_txn_count_1h": 2
    }


def test_training_set_equal_row_for_row(spark, world, settings):
    from relearn.features import spark_engine as se

    tx, labels = world
    fstore.write_feature_tables(tx, labels, settings)
    store = fstore.get_store(settings)
    fstore.apply(store, settings)
    cutoff = START + timedelta(days=DAYS)
    expected = fstore.training_set(store, tx, labels, label_cutoff=cutoff)
    frame = se.training_set(
        store, spark.createDataFrame(se.with_order(tx)), spark.createDataFrame(labels), cutoff
    )
    got = se.to_pandas(frame).drop(columns=[se.ORDER])
    # Same order too (by time, ties in input order), so compare by position.
    expected["_pos"] = got["_pos"] = np.arange(len(got))
    assert mismatches(expected, got, ["_pos"]) == {}
    assert expected["label"].sum() > 0 and (expected["user_txn_count_1h"] > 0).any()


def _lake(tmp_path, tx, labels, holders=None):
    root = tmp_path / "lake"
    io.write_partitioned(tx, root, "transactions")
    io.write_partitioned(labels, root, "labels")
    if holders is not None:
        io.write_cardholders(holders, root)
    return root


def test_features_step_spark_equals_pandas(spark, tmp_path, settings):
    """The whole step on both engines: the same training set file and the same Feast entity tables."""
    config = generator.GeneratorConfig(start=START, days=DAYS, n_users=50, n_merchants=15, seed=9)
    data = generator.generate(config)
    labels = data.labels[data.labels["chargeback_timestamp"] < pd.Timestamp(config.end)]
    root = _lake(tmp_path, data.transactions, labels, data.cardholders)
    kwargs = {"start": START.isoformat(), "days": DAYS, "label_maturity_days": 5, "settings": settings}
    outputs = {}
    for engine in ("pandas", "spark"):
        path = tmp_path / f"training-{engine}.parquet"
        summary = steps.build_features(str(root), str(root), str(path), data_engine=engine, **kwargs)
        tables = [
            pd.read_parquet(settings.offline_dir() / t) for t in (fstore.USER_TABLE, fstore.MERCHANT_TABLE)
        ]
        outputs[engine] = summary, pd.read_parquet(path), tables
    (summary, expected, tables), (s_summary, got, s_tables) = outputs["pandas"], outputs["spark"]
    assert {k: v for k, v in s_summary.items() if k != "engine"} == summary
    expected["_pos"] = got["_pos"] = np.arange(len(got))
    assert mismatches(expected, got, ["_pos"]) == {}
    for key, table, s_table in zip(("user_id", "merchant_id"), tables, s_tables, strict=True):
        assert mismatches(table, s_table, [key, "event_timestamp"]) == {}


def _failure(tmp_path, root, settings) -> str:
    with pytest.raises(steps.StepFailed) as failed:
        steps.build_features(
            str(root),
            str(root),
            str(tmp_path / "out.parquet"),
            start=START.isoformat(),
            days=DAYS,
            settings=settings,
            data_engine="spark",
        )
    text = str(failed.value)
    assert "at org.apache" not in text and "Py4J" not in text and "Traceback" not in text
    return text


@pytest.fixture(scope="module")
def small():
    config = generator.GeneratorConfig(start=START, days=DAYS, n_users=20, n_merchants=13, seed=2)
    data = generator.generate(config)
    return data.transactions, data.labels


def test_bad_lake_missing_partition(spark, tmp_path, settings, small):
    root = _lake(tmp_path, *small)
    shutil.rmtree(io.partitions(root)[(START + timedelta(days=5)).date()])
    text = _failure(tmp_path, root, settings)
    assert "1 day partition(s) of transactions missing: 2024-03-06" in text


def test_bad_lake_schema_change(spark, tmp_path, settings, small):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _lake(tmp_path, *small)
    part = io.partitions(root)[(START + timedelta(days=3)).date()] / io.PART_FILE
    table = pq.read_table(part)
    pq.write_table(table.set_column(4, "amount", table["amount"].cast(pa.string())), part)
    text = _failure(tmp_path, root, settings)
    assert "transactions 2024-03-04: schema changed: amount is string, expected double" in text


def test_bad_lake_rows_far_outside_the_window(spark, tmp_path, settings, small):
    tx, labels = small
    stray = tx.iloc[:3].assign(event_timestamp=pd.Timestamp("2031-01-01", tz="UTC"))
    root = _lake(tmp_path, pd.concat([tx, stray], ignore_index=True), labels)
    text = _failure(tmp_path, root, settings)
    assert "3 transactions outside the window [2024-03-01T00:00:00+00:00, 2024-03-22T00:00:00+00:00)" in text
    assert "2031-01-01 00:00:00" in text


def test_auto_picks_the_engine_by_lake_size(tmp_path, small):
    from relearn.features.spark_step import choose_engine, lake_rows

    root = _lake(tmp_path, *small)
    rows = lake_rows(root)
    assert rows == len(small[0])
    assert choose_engine("auto", str(root), SparkSettings(auto_rows=rows + 1)) == "pandas"
    expected = "spark" if spark_available() else "pandas"
    assert choose_engine("auto", str(root), SparkSettings(auto_rows=rows)) == expected
    with pytest.raises(ValueError, match="data engine must be one of"):
        choose_engine("dask", str(root))
