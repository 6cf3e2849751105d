"""The features step on Spark (``--data-engine spark``), and the ``auto`` choice between the engines.

Same inputs, outputs and Feast repo as the pandas path of :func:`relearn.steps.build_features`: the
entity tables land as the two Parquet files the Feast sources read, the training set as one Parquet file.
Still done in one process after Spark: Feast's ``materialize`` (it loads the latest row per entity) and
the streaming state's bootstrap, both unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from relearn.data import io
from relearn.data.spark_session import SparkSettings, spark_available

log = logging.getLogger("relearn.features.spark")

DataEngine = Literal["pandas", "spark", "auto"]
SECRET_NAMES = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|_KEY$")
DATA_ENGINES: tuple[str, ...] = ("pandas", "spark", "auto")


def lake_rows(root: str | Path, kind: io.Kind = "transactions") -> int:
    """Rows in the lake, from the Parquet footers (no data read)."""
    return sum(
        pq.ParquetFile(f).metadata.num_rows
        for d in io.partitions(root, kind).values()
        for f in d.glob("*.parquet")
    )


def choose_engine(engine: str, transactions_dir: str, settings: SparkSettings | None = None) -> str:
    """``pandas`` or ``spark``: ``auto`` takes Spark from ``RELEARN_SPARK_AUTO_ROWS`` rows (default 2 M) on.

    An empty ``engine`` is the release's (``RELEARN_SPARK_ENGINE``, default pandas).

    ``auto`` falls back to pandas (with a warning) where Spark cannot start: no pyspark or no Java.
    """
    settings = settings or SparkSettings()
    engine = engine or settings.engine  # the release's (chart value spark.engine)
    if engine not in DATA_ENGINES:
        raise ValueError(f"data engine must be one of {list(DATA_ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    rows = lake_rows(transactions_dir)
    chosen = "spark" if rows >= settings.auto_rows else "pandas"
    if chosen == "spark" and not spark_available():
        log.warning("auto: Spark unavailable (pyspark or Java missing), using pandas", extra={"rows": rows})
        chosen = "pandas"
    log.info("data engine chosen", extra={"engine": chosen, "rows": rows, "threshold": settings.auto_rows})
    return chosen


def validate_spark(
    transactions_dir: str, expectations, begin: datetime, end: datetime, scratch: str, local: bool = False
):
    """The validate step's checks on Spark (relearn.data.validate_spark): the report.

    With ``RELEARN_SPARK_SUBMIT=operator`` a SparkApplication's driver computes it and writes it as JSON
    to ``scratch`` (a path it shares with the step); ``local``: in this process regardless (the driver).
    Raises :class:`~relearn.errors.StepFailed` when Spark itself fails (one readable line, not the JVM's).
    """
    from relearn.data.spark_session import SparkEngineError, first_line, spark_session
    from relearn.data.validate import ValidationReport
    from relearn.errors import StepFailed

    if SparkSettings().submit == "operator" and not local:
        arguments = ["--task", "validate", "--transactions", transactions_dir, "--report", scratch]
        arguments += ["--start", begin.isoformat(), "--days", str((end - begin).days)]
        _submit(arguments, "Validation")
        return ValidationReport.model_validate_json(Path(scratch).read_text())
    from relearn.data.validate_spark import validate_lake

    try:
        return validate_lake(spark_session(), transactions_dir, expectations, begin, end)
    except SparkEngineError as exc:
        raise StepFailed(f"Validation on Spark failed: {exc}") from None
    except Exception as exc:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        if isinstance(exc, PySparkException | Py4JError):
            raise StepFailed(f"Validation on Spark failed: {first_line(exc)}") from None
        raise


def build_features_spark(
    transactions_dir: str,
    labels_dir: str,
    training_set_path: str,
    *,
    begin: datetime,
    end: datetime,
    label_maturity_days: int,
    settings,
) -> dict[str, Any]:
    """The features step on Spark: :func:`spark_work`, then Feast's materialize and the state's bootstrap."""
    from relearn.features import store as feast_store

    work = submit_spark_work if SparkSettings().submit == "operator" else spark_work
    summary = work(
        transactions_dir,
        labels_dir,
        training_set_path,
        begin=begin,
        end=end,
        label_maturity_days=label_maturity_days,
        settings=settings,
    )
    feast_store.materialize(feast_store.get_store(settings), end=end)
    _bootstrap(transactions_dir, labels_dir, end)
    return summary


def spark_work(
    transactions_dir: str,
    labels_dir: str,
    training_set_path: str,
    *,
    begin: datetime,
    end: datetime,
    label_maturity_days: int,
    settings,
) -> dict[str, Any]:
    """Check the lake, write the entity tables, apply the Feast repo, write the training set (Spark's part).

    What the SparkApplication's driver runs too (relearn.features.spark_driver). Raises
    :class:`~relearn.errors.StepFailed` with a readable report on a bad lake or a Spark error.
    """
    from relearn.data import spark_lake
    from relearn.data.spark_session import SparkEngineError, first_line, spark_session
    from relearn.errors import StepFailed

    try:
        spark = spark_session()
        problems = spark_lake.lake_problems(spark, transactions_dir, labels_dir, begin, end)
        if problems:
            raise StepFailed(spark_lake.report(problems, transactions_dir, labels_dir))
        return _build(
            spark, transactions_dir, labels_dir, training_set_path, end, label_maturity_days, settings
        )
    except SparkEngineError as exc:
        raise StepFailed(f"Features on Spark failed: {exc}") from None
    except Exception as exc:  # py4j / Spark analysis errors: one readable line, not the JVM's trace
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        if isinstance(exc, PySparkException | Py4JError):
            raise StepFailed(f"Features on Spark failed: {first_line(exc)}") from None
        raise


def submit_spark_work(
    transactions_dir: str,
    labels_dir: str,
    training_set_path: str,
    *,
    begin: datetime,
    end: datetime,
    label_maturity_days: int,
    settings,
    api_client: Any = None,
) -> dict[str, Any]:
    """:func:`spark_work` as a SparkApplication's driver (``RELEARN_SPARK_SUBMIT=operator``).

    The paths must be ones the driver reaches too (object storage in a cluster); the driver writes the
    summary next to the training set. Settings reach it as this step's ``RELEARN_*`` environment.
    """
    summary_path = f"{training_set_path}.summary.json"
    arguments = [
        "--transactions",
        transactions_dir,
        "--labels",
        labels_dir,
        "--training-set",
        training_set_path,
    ]
    arguments += ["--start", begin.isoformat(), "--days", str((end - begin).days)]
    arguments += ["--label-maturity-days", str(label_maturity_days), "--summary", summary_path]
    _submit(arguments, "Features", api_client, settings.home)
    return json.loads(Path(summary_path).read_text())


def _submit(arguments: list[str], what: str, api_client: Any = None, home: Any = None) -> None:
    """Run the driver with ``arguments`` as a SparkApplication and wait for it (StepFailed if it fails)."""
    from relearn.data.spark_session import SparkEngineError
    from relearn.errors import StepFailed
    from relearn.features import spark_application as sa

    app_settings = sa.SparkApplicationSettings()
    # The step's settings reach the driver as env in the spec, which anyone who may read the application
    # reads: never a password or token (the driver needs none; its object-store keys come from the Secret).
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("RELEARN_") and k != "RELEARN_SPARK_SUBMIT" and not SECRET_NAMES.search(k)
    }
    if home is not None:
        env["RELEARN_HOME"] = str(home)
    owner = {"name": os.environ.get("KFP_POD_NAME", ""), "uid": os.environ.get("KFP_POD_UID", "")}
    app = sa.render(
        uuid.uuid4().hex[:12],
        arguments,
        image=app_settings.image or sa.default_image(),
        settings=app_settings,
        env=env,
        owner=owner if all(owner.values()) else None,
    )
    try:
        sa.submit_and_wait(app, app_settings, api_client)
    except SparkEngineError as exc:
        raise StepFailed(f"{what} on Spark failed: {exc}") from None


def _build(spark, transactions_dir, labels_dir, training_set_path, end, label_maturity_days, settings):
    from pyspark.sql import functions as F  # noqa: N812

    from relearn.data import spark_lake
    from relearn.data.cardholders import ATTRIBUTES, UNKNOWN
    from relearn.errors import StepFailed
    from relearn.features import spark_engine
    from relearn.features import store as feast_store
    from relearn.features.spec import LABEL, MODEL_INPUTS

    tx = spark_lake.read_lake(spark, transactions_dir, "transactions")  # read twice: cheaper than a cache
    labels = spark_lake.read_lake(spark, labels_dir, "labels").cache()
    users, merchants = spark_engine.entity_feature_tables(tx, labels)
    offline = settings.offline_dir()
    offline.mkdir(parents=True, exist_ok=True)
    spark_lake.write_parquet_file(users, offline / feast_store.USER_TABLE)
    spark_lake.write_parquet_file(merchants, offline / feast_store.MERCHANT_TABLE)
    store = feast_store.get_store(settings)
    feast_store.apply(store, settings)

    frame = spark_engine.training_set(store, tx, labels, label_cutoff=end)
    frame = frame.where(F.col("event_timestamp") < F.lit(end - timedelta(days=label_maturity_days)))
    holders = io.read_cardholders(transactions_dir)  # one row per card holder: small
    names = list(ATTRIBUTES)
    frame = frame.join(F.broadcast(spark.createDataFrame(holders[["user_id", *names]])), "user_id", "left")
    frame = frame.fillna(UNKNOWN, subset=names).orderBy("event_timestamp", spark_lake.ORDER)
    # The pandas path's columns: training columns, model inputs, label, then the holders' attributes.
    columns = [c for c in feast_store.TRAINING_COLUMNS if c in frame.columns]
    frame = frame.select(*columns, *MODEL_INPUTS, LABEL, *names).cache()
    rows = frame.count()
    if rows == 0:
        raise StepFailed(f"No transaction is older than {label_maturity_days} days: no training rows.")
    positives = frame.agg(F.sum("label")).first()[0] or 0
    spark_lake.write_parquet_file(frame, training_set_path)
    summary = {"rows": rows, "positives": int(positives), "label_cutoff": end.isoformat(), "engine": "spark"}
    log.info("training set built", extra=summary)
    return summary


def _bootstrap(transactions_dir: str, labels_dir: str, end: datetime) -> None:
    """The streaming state's bootstrap, as the pandas path does it (one process; see the module doc)."""
    from relearn.features.backfill import bootstrap_configured

    bootstrap_configured(io.read_transactions(transactions_dir), io.read_labels(labels_dir), end)
