"""Batch validation: clean data passes, each kind of bad data fails the check named after it."""

from __future__ import annotations

import pandas as pd
import pytest

from relearn.data.generator import GeneratorConfig, generate
from relearn.data.validate import Expectations, ValidationReport, validate

CFG = {"n_users": 800, "days": 14, "n_merchants": 150, "seed": 21}
START, END = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-15", tz="UTC")


@pytest.fixture(scope="module")
def clean():
    return generate(GeneratorConfig(**CFG)).transactions


def after_onset(scenario: str) -> tuple[pd.DataFrame, pd.Timestamp]:
    data = generate(GeneratorConfig(**CFG, scenario=scenario))
    tx = data.transactions
    return tx[tx["event_timestamp"] >= data.onset].reset_index(drop=True), data.onset


def failed(report: ValidationReport) -> set[str]:
    return {c.name for c in report.failed}


def test_clean_batch_passes(clean):
    report = validate(clean, window_start=START, window_end=END)
    assert report.ok, report.summary()
    assert report.summary().startswith("Validation PASSED")
    names = {c.name for c in report.checks}
    assert {
        "schema:columns",
        "schema:types",
        "unique:transaction_id",
        "contract:amount",
        "amount_median:EUR",
    } <= names
    assert {"volume:daily", "freshness", "window", "contract:merchant_category"} <= names


def test_clean_batch_passes_without_a_window(clean):
    report = validate(clean)
    assert report.ok, report.summary()
    assert report.check("freshness").skipped and report.check("window").skipped


@pytest.mark.parametrize("scenario", ["covariate_shift", "concept_drift", "label_shift"])
def test_real_drift_is_not_a_data_bug(scenario):
    batch, onset = after_onset(scenario)
    report = validate(batch, window_start=onset, window_end=END)
    assert report.ok, report.summary()


def test_units_bug_fails_the_eur_median():
    batch, onset = after_onset("data_bug_units")
    report = validate(batch, window_start=onset, window_end=END)
    assert not report.ok
    assert "amount_median:EUR" in failed(report)
    assert "amount_median:GBP" not in failed(report)


def test_nulls_bug_fails_the_null_fraction():
    batch, onset = after_onset("data_bug_nulls")
    report = validate(batch, window_start=onset, window_end=END)
    assert failed(report) == {"null_fraction:merchant_category"}
    assert "%" in report.check("null_fraction:merchant_category").observed


def test_out_of_domain_category(clean):
    bad = clean.copy()
    bad.loc[bad.index[:5], "merchant_category"] = "crypto"
    report = validate(bad, window_start=START, window_end=END)
    assert failed(report) == {"contract:merchant_category"}
    detail = report.check("contract:merchant_category").detail
    assert (
        detail.startswith("row 0: field 'merchant_category' must be one of grocery, ")
        and "(got 'crypto')" in detail
    )


def test_duplicate_ids(clean):
    bad = pd.concat([clean, clean.iloc[:3]]).sort_values("event_timestamp", ignore_index=True)
    report = validate(bad, window_start=START, window_end=END)
    assert "unique:transaction_id" in failed(report)
    assert report.check("unique:transaction_id").observed.startswith("3 ")


def test_missing_day_and_volume_drop(clean):
    day = clean["event_timestamp"].dt.floor("D")
    missing = clean[day != pd.Timestamp("2024-01-05", tz="UTC")]
    report = validate(missing, window_start=START, window_end=END)
    assert failed(report) == {"volume:daily"}
    assert "2024-01-05: 0" in report.check("volume:daily").detail

    thinned = clean[(day != pd.Timestamp("2024-01-09", tz="UTC")) | (clean.index % 4 == 0)]
    report = validate(thinned)  # no window: days between the first and last event
    assert failed(report) == {"volume:daily"}
    assert "2024-01-09" in report.check("volume:daily").detail


def test_stale_data(clean):
    stale = clean[clean["event_timestamp"] < END - pd.Timedelta(hours=12)]
    report = validate(stale, window_start=START, window_end=END)
    assert "freshness" in failed(report)


def test_events_outside_the_window(clean):
    report = validate(clean, window_start=START + pd.Timedelta(days=1), window_end=END)
    assert "window" in failed(report)


def test_bad_amounts(clean):
    bad = clean.copy()
    bad.loc[bad.index[::100], "amount"] = -1.0
    report = validate(bad)
    assert failed(report) == {"contract:amount"}
    check = report.check("contract:amount")
    currency = bad["currency"].iloc[0]
    assert check.detail.startswith("row 0: field 'amount' must be a number > 0 and <= ")
    assert f"for currency {currency} (got -1.0); row 100: " in check.detail
    assert check.observed.startswith(f"{len(bad.index[::100]):,} rows break it")
    one = clean.copy()
    one.loc[one.index[5], "amount"] = -1.0
    tolerated = validate(one).check("contract:amount")  # 1 row in ~28k: within the 0.1 % tolerated
    assert tolerated.ok and tolerated.detail.startswith("row 5: field 'amount'"), tolerated


def test_never_raises_on_garbage():
    garbage = pd.DataFrame({"amount": ["a", None, "3"], "event_timestamp": ["x", "2024-01-01", None]})
    report = validate(garbage, window_start=START, window_end=END)
    assert not report.ok
    assert {"schema:columns", "schema:types"} <= failed(report)
    empty = validate(pd.DataFrame())
    assert not empty.ok and "volume:total" in failed(empty)
    assert validate(clean_columns_only := pd.DataFrame(columns=["transaction_id"])).n_rows == 0
    assert not validate(clean_columns_only).ok


def test_custom_expectations(clean):
    strict = Expectations(amount_median_range={"EUR": (1, 10)})
    assert failed(validate(clean, strict)) == {"amount_median:EUR"}


def test_reports_name_the_failing_check():
    batch, onset = after_onset("data_bug_nulls")
    report = validate(batch, window_start=onset, window_end=END)
    md = report.to_markdown()
    assert "FAILED" in md and "null_fraction:merchant_category" in md and "| check | status |" in md
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert '<tr class="fail"><td>null_fraction:merchant_category</td>' in page
    assert "<script" not in page and "http" not in page  # self-contained
    summary = report.summary()
    assert "null_fraction:merchant_category" in summary and "\n" not in summary
    assert ValidationReport.model_validate_json(report.model_dump_json()).failed == report.failed
