"""The validate step on Spark: the pandas engine's report, word for word, from Spark aggregates.

Small lakes and the one Spark session of the Spark tests (test_spark_parity's fixture). Each kind of bad
batch (a missing partition, a schema change, rows far outside the window, nulls, a unit change, broken
records and duplicated ids) stops the step with the readable report, never a JVM stack trace; the bad
batch goes the cluster's way, a SparkApplication through the stand-in API server (tests/support/kube_api.py)
whose driver runs in this process on the shared session.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_spark_parity import DAYS, START, _lake, _world, spark  # noqa: F401 (the shared session)

from relearn import steps
from relearn.data import generator, io
from relearn.data.validate import validate
from relearn.data.validate_spark import validate_lake
from relearn.features import spark_driver
from support.crds import CRDS
from support.kube_api import FakeApiServer

END = START + timedelta(days=DAYS)


def _pandas(root) -> str:
    return validate(io.read_transactions(root), window_start=START, window_end=END).to_markdown()


def test_same_report_as_pandas_on_broken_records(spark, tmp_path):  # noqa: F811
    """Records breaking the contract, a duplicated id, events on the window's edges: same Markdown."""
    tx, labels = _world()
    root = _lake(tmp_path, tx, labels)
    report = validate_lake(spark, root, window_start=START, window_end=END)
    assert report.to_markdown() == _pandas(root)
    failed = {c.name for c in report.failed}
    assert {"contract:currency", "unique:transaction_id"} <= failed
    assert report.check("contract:amount").observed.startswith("3 rows break it")  # within its tolerance
    # The examples name the rows of the pandas engine's frame, in the contract's words.
    assert "row " in report.check("contract:amount").detail
    assert "must be a number > 0" in report.check("contract:amount").detail


@pytest.fixture(scope="module")
def world():
    """A healthy small world (2,390 transactions: EUR, GBP, USD and PLN above the median's minimum)."""
    config = generator.GeneratorConfig(start=START, days=DAYS, n_users=40, n_merchants=13, seed=2)
    return generator.generate(config)


def _missing_day(root, tx):
    shutil.rmtree(io.partitions(root)[(START + timedelta(days=5)).date()])


def _schema_change(root, tx):
    part = io.partitions(root)[(START + timedelta(days=3)).date()] / io.PART_FILE
    table = pq.read_table(part)
    pq.write_table(table.set_column(4, "amount", table["amount"].cast(pa.string())), part)


def _far_outside(root, tx):
    stray = tx.iloc[:3].assign(event_timestamp=pd.Timestamp("2031-01-01", tz="UTC"))
    io.write_partitioned(stray, root, "transactions")


def _nulls(root, tx):
    day = tx[tx["event_timestamp"].dt.date == (START + timedelta(days=2)).date()]
    io.write_partitioned(day.assign(merchant_category=None), root, "transactions")


def _units(root, tx):
    later = tx[tx["event_timestamp"] >= pd.Timestamp(START + timedelta(days=9))]  # EUR in cents
    eur = later["currency"] == "EUR"
    io.write_partitioned(later.assign(amount=later["amount"].where(~eur, later["amount"] * 100)), root)


def test_a_good_lake_passes_the_step_on_spark_with_the_pandas_report(spark, tmp_path, world):  # noqa: F811
    root = _lake(tmp_path, world.transactions, world.labels)
    report_path = tmp_path / "report.md"
    assert steps.validate(
        str(root), str(report_path), start=START.isoformat(), days=DAYS, data_engine="spark"
    )
    assert report_path.read_text() == _pandas(root)
    assert report_path.read_text().startswith("# Data validation: PASSED")


# Each fault and the check (with words of its report) that must stop the step. One lake holds them all
# (each in a day of its own, so none masks another): one Spark run, within CI's budget.
FAULTS = [
    (_missing_day, "volume:daily", "2024-03-06: 0"),  # and 2024-03-04, left out for its schema
    (
        _schema_change,
        "schema:types",
        "transactions 2024-03-04: schema changed: amount is string, expected double",
    ),
    (_far_outside, "window", "3 rows outside"),
    (_nulls, "null_fraction:merchant_category", "null_fraction:merchant_category (observed 4."),
    (_units, "amount_median:EUR", "amount_median:EUR (observed "),
]


class DriverOperator:
    """Plays the Spark Operator: runs the created application's driver (its arguments) in this process, on
    the tests' Spark session, and sets the state as the operator would (COMPLETED, or FAILED on exit 1)."""

    def __init__(self, api) -> None:
        self.api = api

    def __call__(self, path: str, app: dict) -> None:
        code = spark_driver.main(app["spec"]["arguments"])
        state = (
            {"state": "COMPLETED"} if code == 0 else {"state": "FAILED", "errorMessage": f"ExitCode: {code}"}
        )
        self.api.objects[path] = {**app, "status": {"applicationState": state}}


@pytest.fixture
def operator(tmp_path, monkeypatch):
    """The step submits a SparkApplication through the stand-in API server; the driver runs in-process."""
    if not CRDS.is_dir():
        pytest.skip(f"no CRDs in {CRDS}")
    with FakeApiServer() as api:
        api.on_create = DriverOperator(api)
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("RELEARN_SPARK_SUBMIT", "operator")
        monkeypatch.setenv("RELEARN_SPARK_APP_POLL_SECONDS", "0.05")
        yield api


def test_a_bad_batch_stops_the_step_with_a_readable_report(spark, tmp_path, world, operator):  # noqa: F811
    """On the cluster's path: the validate step renders a SparkApplication whose driver writes the report."""
    root = _lake(tmp_path, world.transactions, world.labels)
    for breaks, _, _ in FAULTS:
        breaks(root, world.transactions)
    report_path = tmp_path / "report.md"
    with pytest.raises(steps.StepFailed) as failed:
        steps.validate(str(root), str(report_path), start=START.isoformat(), days=DAYS, data_engine="spark")
    text = str(failed.value)
    assert text.startswith("Validation failed: Validation FAILED: "), text.splitlines()[0]
    for _, check, words in FAULTS:
        assert f"| {check} | **FAIL** |" in text, check
        assert words in text, words
    assert "at org.apache" not in text and "Py4J" not in text and "Traceback" not in text
    assert report_path.read_text() in text  # the Markdown report written for the UI, the same words
    # The driver's report, through one SparkApplication: created (valid against the CRD), then read.
    calls = [(r["method"], r["path"].split("/")[-1]) for r in operator.requests]
    assert calls[0] == ("POST", "sparkapplications") and {m for m, _ in calls[1:]} == {"GET"}
    assert operator.rejected == []
    (app,) = operator.objects.values()
    assert app["spec"]["arguments"][:2] == ["--task", "validate"]
