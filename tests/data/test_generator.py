"""The synthetic generator: determinism, realism, fraud patterns, chargebacks, scenarios, Parquet IO, CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from relearn.data.generator import GeneratorConfig, generate
from relearn.data.io import read_labels, read_transactions, write_partitioned
from relearn.data.scenarios import SCENARIOS, resolve_onset
from relearn.data.schema import CATEGORICAL_DOMAINS, LABEL_SCHEMA, TRANSACTION_SCHEMA

SMALL = {"n_users": 1_000, "days": 14, "n_merchants": 200, "seed": 11}


@pytest.fixture(scope="module")
def world():
    """Defaults apart from the population size: 3,000 users over 28 days (~210k rows)."""
    return generate(GeneratorConfig(n_users=3_000, seed=3))


@pytest.fixture(scope="module")
def base():
    return generate(GeneratorConfig(**SMALL))


def _split(data):
    tx = data.transactions
    before = tx[tx["event_timestamp"] < data.onset].reset_index(drop=True)
    after = tx[tx["event_timestamp"] >= data.onset].reset_index(drop=True)
    return before, after


# --- determinism and schema -----------------------------------------------------------------------------
def test_same_seed_gives_identical_data(base):
    again = generate(GeneratorConfig(**SMALL))
    pd.testing.assert_frame_equal(base.transactions, again.transactions)
    pd.testing.assert_frame_equal(base.labels, again.labels)


def test_different_seed_gives_different_data(base):
    other = generate(GeneratorConfig(**{**SMALL, "seed": 12}))
    assert not set(other.transactions["transaction_id"]) & set(base.transactions["transaction_id"])
    assert other.transactions["amount"].sum() != base.transactions["amount"].sum()


def test_conforms_to_schema(world):
    tx, labels = world.transactions, world.labels
    assert list(tx.columns) == TRANSACTION_SCHEMA.names
    assert list(labels.columns) == LABEL_SCHEMA.names
    pa.Table.from_pandas(tx, schema=TRANSACTION_SCHEMA, preserve_index=False)  # raises on a mismatch
    pa.Table.from_pandas(labels, schema=LABEL_SCHEMA, preserve_index=False)
    assert str(tx["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert tx["event_timestamp"].is_monotonic_increasing
    assert labels["chargeback_timestamp"].is_monotonic_increasing
    assert tx["transaction_id"].is_unique
    for col, domain in CATEGORICAL_DOMAINS.items():
        assert set(tx[col]) <= set(domain), col
    assert tx.notna().all().all()
    cfg = world.config
    assert tx["event_timestamp"].min() >= pd.Timestamp(cfg.start)
    assert tx["event_timestamp"].max() < pd.Timestamp(cfg.end)


# --- statistics -----------------------------------------------------------------------------------------
def test_default_size_and_fraud_rate():
    data = generate()
    assert 150_000 <= len(data.transactions) <= 250_000
    assert 0.005 <= data.transactions["is_fraud"].mean() <= 0.02


def test_fraud_rate_and_patterns(world):
    tx = world.transactions
    assert 0.008 <= tx["is_fraud"].mean() <= 0.012  # target 1 %
    shares = tx.loc[tx["is_fraud"], "fraud_pattern"].value_counts(normalize=True)
    assert set(shares.index) == {"card_testing", "account_takeover", "compromised_merchant"}
    assert shares.min() > 0.15  # each pattern is a real part of the fraud
    assert (tx["is_fraud"] == (tx["fraud_pattern"] != "none")).all()


def test_fraud_patterns_look_like_themselves(world):
    tx = world.transactions
    normal = tx[~tx["is_fraud"]]
    eur = tx["currency"] == "EUR"
    ct = tx[tx["fraud_pattern"] == "card_testing"]
    assert (ct["channel"] == "ecommerce").all()
    assert ct.loc[ct["currency"] == "EUR", "amount"].max() <= 5.0
    # Bursts: most attempts follow another attempt on the same card within 10 minutes.
    gaps = ct.groupby("user_id")["event_timestamp"].diff().dropna()
    assert (gaps < pd.Timedelta(minutes=10)).mean() > 0.8

    ato = tx[tx["fraud_pattern"] == "account_takeover"]
    seen = set(zip(normal["user_id"], normal["device_id"], strict=True))
    assert not any(pair in seen for pair in zip(ato["user_id"], ato["device_id"], strict=True))  # new devices
    assert ato["country"].isin(["US", "GB", "BR", "NG", "RU", "CN"]).all()
    assert ato.loc[eur, "amount"].median() > 3 * normal.loc[eur, "amount"].median()

    cm = tx[tx["fraud_pattern"] == "compromised_merchant"]
    per_merchant = tx[tx["merchant_id"].isin(cm["merchant_id"])].groupby("merchant_id")["is_fraud"].mean()
    assert per_merchant.max() <= 0.35  # a share of the merchant's traffic, not all of it


def test_daily_and_weekly_seasonality(world):
    tx = world.transactions
    hour = tx["event_timestamp"].dt.hour
    by_hour = hour.value_counts().reindex(range(24), fill_value=0)
    assert by_hour[2:5].mean() < 0.25 * by_hour[18:21].mean()  # quiet nights, busy evenings
    weekend = tx["event_timestamp"].dt.dayofweek >= 5
    morning = hour.between(6, 9)
    assert morning[weekend].mean() < 0.75 * morning[~weekend].mean()  # weekends start later
    daily = tx.groupby(tx["event_timestamp"].dt.dayofweek).size() / 4  # 4 weeks
    assert daily[6] < 0.9 * daily[[0, 1, 2, 3]].mean()  # quieter Sundays


def test_amount_medians_by_category(world):
    tx = world.transactions
    eur = tx[~tx["is_fraud"] & (tx["currency"] == "EUR")]
    med = eur.groupby("merchant_category")["amount"].median()
    assert med["travel"] > med["electronics"] > med["grocery"] > med["digital_goods"]
    assert 25 <= med["grocery"] <= 60
    assert 250 <= med["travel"] <= 700
    withdrawals = eur.loc[eur["merchant_category"] == "cash_withdrawal"]
    assert (withdrawals["amount"] % 10 == 0).all()
    assert (withdrawals["channel"] == "atm").all()


def test_chargebacks(world):
    tx = world.transactions.set_index("transaction_id")
    labels = world.labels
    assert labels["transaction_id"].is_unique
    assert labels["transaction_id"].isin(tx.index).all()
    assert tx.loc[labels["transaction_id"], "is_fraud"].all()  # labels only for fraud
    assert labels["is_fraud"].all()
    delay = (
        labels["chargeback_timestamp"].to_numpy()
        - tx.loc[labels["transaction_id"], "event_timestamp"].to_numpy()
    )
    days = delay / np.timedelta64(1, "D")
    assert days.min() >= 1.0
    assert days.max() <= 60.0
    assert 5.5 <= np.median(days) <= 8.5  # configured median 7 days
    assert 0.85 <= len(labels) / tx["is_fraud"].sum() <= 0.95  # ~90 % are charged back


# --- scenarios ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenario_data():
    return {name: generate(GeneratorConfig(**SMALL, scenario=name)) for name in SCENARIOS}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_leaves_everything_before_onset_alone(name, base, scenario_data):
    data = scenario_data[name]
    before, _ = _split(data)
    base_before, _ = _split(base)
    pd.testing.assert_frame_equal(before, base_before)
    ids = set(before["transaction_id"])
    pd.testing.assert_frame_equal(
        data.labels[data.labels["transaction_id"].isin(ids)].reset_index(drop=True),
        base.labels[base.labels["transaction_id"].isin(ids)].reset_index(drop=True),
    )
    assert data.transactions["transaction_id"].is_unique
    assert data.transactions["event_timestamp"].is_monotonic_increasing


def test_covariate_shift(scenario_data, base):
    _, after = _split(scenario_data["covariate_shift"])
    _, base_after = _split(base)
    share = after.loc[~after["is_fraud"], "merchant_category"].isin(["electronics", "travel"]).mean()
    base_share = (
        base_after.loc[~base_after["is_fraud"], "merchant_category"].isin(["electronics", "travel"]).mean()
    )
    assert share > base_share + 0.2
    eur, base_eur = after[after["currency"] == "EUR"], base_after[base_after["currency"] == "EUR"]
    assert eur["amount"].median() > 1.5 * base_eur["amount"].median()


def test_label_shift(scenario_data):
    before, after = _split(scenario_data["label_shift"])
    assert after["is_fraud"].mean() > 2 * before["is_fraud"].mean()
    assert after["is_fraud"].mean() < 0.1


def test_concept_drift_adds_bust_out_only_after_onset(scenario_data, base):
    data = scenario_data["concept_drift"]
    before, after = _split(data)
    assert (before["fraud_pattern"] != "bust_out").all()
    bust = after[after["fraud_pattern"] == "bust_out"]
    assert len(bust) > 50
    assert "bust_out" not in set(base.transactions["fraud_pattern"])
    # It looks like normal use: the user's own devices and a domestic-looking country mix.
    own = set(zip(base.transactions["user_id"], base.transactions["device_id"], strict=True))
    assert np.mean([p in own for p in zip(bust["user_id"], bust["device_id"], strict=True)]) > 0.8
    assert (
        bust["merchant_category"]
        .isin(["electronics", "gambling", "fashion", "travel", "cash_withdrawal"])
        .all()
    )
    assert data.labels["transaction_id"].isin(bust["transaction_id"]).any()


def test_data_bug_units(scenario_data, base):
    _, after = _split(scenario_data["data_bug_units"])
    _, base_after = _split(base)
    pd.testing.assert_series_equal(after["transaction_id"], base_after["transaction_id"])
    eur = after["currency"] == "EUR"
    ratio = after.loc[eur, "amount"] / base_after.loc[eur, "amount"]
    assert np.allclose(ratio, 100, rtol=1e-3)
    assert (after.loc[~eur, "amount"] == base_after.loc[~eur, "amount"]).all()


def test_data_bug_nulls(scenario_data):
    before, after = _split(scenario_data["data_bug_nulls"])
    assert before["merchant_category"].isna().mean() == 0
    assert 0.25 <= after["merchant_category"].isna().mean() <= 0.35


def test_onset_parsing_and_config_checks():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert resolve_onset("day 3", start, 10) == start + timedelta(days=3)
    assert resolve_onset("0.5", start, 10) == start + timedelta(days=5)
    assert resolve_onset("2024-01-04T12:00", start, 10) == datetime(2024, 1, 4, 12, tzinfo=UTC)
    assert resolve_onset(None, start, 10) is None
    with pytest.raises(ValueError):
        GeneratorConfig(scenario="nope")
    with pytest.raises(ValueError):
        GeneratorConfig(start=datetime(2024, 1, 1, 5, tzinfo=UTC))
    with pytest.raises(ValueError):
        GeneratorConfig(days=5, onset=datetime(2024, 2, 1, tzinfo=UTC))
    onset = datetime(2024, 1, 4, 12, tzinfo=UTC)
    data = generate(GeneratorConfig(n_users=200, days=7, scenario="concept_drift", onset=onset))
    bust = data.transactions[data.transactions["fraud_pattern"] == "bust_out"]
    assert len(bust) and bust["event_timestamp"].min() >= onset


# --- Parquet IO -----------------------------------------------------------------------------------------
def test_parquet_round_trip(base, tmp_path):
    tx_files = write_partitioned(base.transactions, tmp_path, "transactions")
    label_files = write_partitioned(base.labels, tmp_path, "labels")
    days = sorted(p.parent.name for p in tx_files)
    assert days == [f"date={d:%Y-%m-%d}" for d in pd.date_range("2024-01-01", periods=14, freq="D")]
    assert all(p.name == "part-0.parquet" for p in tx_files)
    label_days = {p.parent.name for p in label_files}
    assert label_days == {f"date={d:%Y-%m-%d}" for d in base.labels["chargeback_timestamp"].dt.date}

    pd.testing.assert_frame_equal(read_transactions(tmp_path), base.transactions)
    pd.testing.assert_frame_equal(read_labels(tmp_path), base.labels)

    lo, hi = pd.Timestamp("2024-01-03 12:00", tz="UTC"), pd.Timestamp("2024-01-05", tz="UTC")
    window = read_transactions(tmp_path, start=lo, end="2024-01-05")
    expected = base.transactions[
        (base.transactions["event_timestamp"] >= lo) & (base.transactions["event_timestamp"] < hi)
    ]
    pd.testing.assert_frame_equal(window, expected.reset_index(drop=True))
    until = pd.Timestamp("2024-01-12 06:00", tz="UTC")
    known = read_labels(tmp_path, until=until)
    pd.testing.assert_frame_equal(
        known, base.labels[base.labels["chargeback_timestamp"] <= until].reset_index(drop=True)
    )
    # Rewriting a day replaces its partition instead of duplicating rows.
    write_partitioned(base.transactions, tmp_path, "transactions")
    assert len(read_transactions(tmp_path)) == len(base.transactions)
    assert read_transactions(tmp_path / "empty").columns.tolist() == TRANSACTION_SCHEMA.names


def test_write_enforces_schema(base, tmp_path):
    with pytest.raises(ValueError):
        write_partitioned(base.transactions.drop(columns=["amount"]), tmp_path, "transactions")


# --- CLI ------------------------------------------------------------------------------------------------
def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "relearn.data", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in ("--out", "--days", "--users", "--scenario", "--onset", "--fraud-rate", "data_bug_units"):
        assert option in result.stdout


def test_cli_writes_partitions(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "relearn.data", "--out", str(out), "--days", "3", "--users", "200"]
    cmd += [
        "--merchants",
        "50",
        "--seed",
        "5",
        "--scenario",
        "label_shift",
        "--onset",
        "day 1",
        "--no-progress",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "transactions").iterdir()) == [
        "date=2026-01-01",
        "date=2026-01-02",
        "date=2026-01-03",
    ]
    assert any((out / "labels").iterdir())
    assert "fraud_rate" in result.stdout and str(out) in result.stdout
    tx = read_transactions(out)
    onset = datetime(2026, 1, 2, tzinfo=UTC)
    config = GeneratorConfig(
        start=datetime(2026, 1, 1, tzinfo=UTC),
        days=3,
        n_users=200,
        n_merchants=50,
        seed=5,
        scenario="label_shift",
        onset=onset,
    )
    expected = generate(config)
    pd.testing.assert_frame_equal(tx, expected.transactions)
