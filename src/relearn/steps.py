"""The training pipeline's steps as plain functions over files: ingest, validate and features here.

Train and register are :mod:`relearn.training`'s, evaluate and gate :mod:`relearn.evaluation`'s; the
first two are re-exported here, so a component calls ``steps.<step>`` for each.

The KFP components in ``components/`` are thin wrappers around these: they hand over artifact paths and
parameters, nothing else. Keeping the logic here makes every step testable without Kubeflow and lets the
same code run in a Kubeflow pod and in a ``kfp.local`` subprocess.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel

from relearn.data.io import window
from relearn.errors import StepFailed
from relearn.logs import configure_logging
from relearn.settings import RelearnSettings
from relearn.training import TrainStepParams, register, splits, tracking, train

__all__ = [  # train and register are relearn.training's, re-exported: the components call steps.<name>
    "IngestParams",
    "StepFailed",
    "TrainStepParams",
    "build_features",
    "ingest",
    "register",
    "run_step",
    "splits",
    "tracking",
    "train",
    "validate",
    "window",
    "with_cardholders",
]
log = logging.getLogger("relearn.steps")
T = TypeVar("T")


def run_step(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs a step inside a KFP task: JSON logs, and a readable exit (code 1) on :class:`StepFailed`."""
    configure_logging()
    try:
        return step(*args, **kwargs)
    except StepFailed as exc:
        print(f"\n{exc}\n", file=sys.stderr, flush=True)
        log.error("step failed", extra={"step": step.__name__, "reason": str(exc).splitlines()[0]})
        raise SystemExit(1) from None


# ---------------------------------------------------------------------------------------------- ingest
class IngestParams(BaseModel):
    """Which transactions to ingest: a window of a Parquet source, or simulated ones."""

    start: str
    days: int
    users: int = 3000
    merchants: int = 500
    seed: int = 7
    scenario: str = "none"
    onset: str = ""
    source: str = ""
    disparity: str = ""  # generated data only: plant a group disparity, e.g. "age_band=65+" (fairness tests)


def ingest(params: IngestParams, transactions_dir: str, labels_dir: str) -> dict[str, Any]:
    """Reads (or, locally, generates) the window's transactions and the labels known at its end."""
    from pydantic import ValidationError

    from relearn.data import generator, io
    from relearn.data.scenarios import resolve_onset

    begin, end = window(params.start, params.days)
    if params.source:
        transactions = io.read_transactions(params.source, start=begin, end=end)
        labels = io.read_labels(params.source, until=end)
        holders = io.read_cardholders(params.source)
    else:
        try:
            config = generator.GeneratorConfig(
                start=begin,
                days=params.days,
                n_users=params.users,
                n_merchants=params.merchants,
                seed=params.seed,
                scenario=params.scenario,
                onset=resolve_onset(params.onset or None, begin, params.days),
                disparity=params.disparity,
            )
        except (ValidationError, ValueError) as exc:
            raise StepFailed(f"Bad ingest parameters: {exc}") from None
        data = generator.generate(config)
        transactions, holders = data.transactions, data.cardholders
        # Only chargebacks that have arrived by the end of the window exist yet.
        labels = data.labels[data.labels["chargeback_timestamp"] < pd.Timestamp(end)]
    io.write_partitioned(transactions, transactions_dir, "transactions")
    io.write_partitioned(labels, labels_dir, "labels")
    # Next to the transactions, for fairness measurement only: build_features joins it as non-inputs.
    io.write_cardholders(holders, transactions_dir)
    summary = {
        "rows": len(transactions),
        "labels": len(labels),
        "window_start": begin.isoformat(),
        "window_end": end.isoformat(),
        "source": params.source or f"generated(seed={params.seed}, scenario={params.scenario})",
    }
    log.info("ingested", extra=summary)
    return summary


# -------------------------------------------------------------------------------------------- validate
def validate(
    transactions_dir: str, report_path: str, *, start: str, days: int, data_engine: str = "pandas"
) -> dict[str, Any]:
    """Checks the batch against the expectations; raises :class:`StepFailed` with the report if it fails.

    ``data_engine`` as the features step's: on ``spark`` the same checks run as Spark aggregates over
    every row of the lake (relearn.data.validate_spark), with the same report.
    """
    from relearn.data import io
    from relearn.data.validate import Expectations
    from relearn.data.validate import validate as check
    from relearn.features import spark_step

    begin, end = window(start, days)
    try:
        data_engine = spark_step.choose_engine(data_engine, transactions_dir)
    except ValueError as exc:
        raise StepFailed(str(exc)) from None
    if data_engine == "spark":
        scratch = f"{report_path}.spark.json"  # the SparkApplication's report, when one computes it
        report = spark_step.validate_spark(transactions_dir, Expectations(), begin, end, scratch)
    else:
        transactions = io.read_transactions(transactions_dir)
        report = check(transactions, Expectations(), window_start=begin, window_end=end)
    markdown = report.to_markdown()
    Path(report_path).write_text(markdown)
    Path(report_path).with_suffix(".html").write_text(report.to_html())
    log.info("validated", extra={"ok": report.ok, "rows": report.n_rows, "engine": data_engine})
    if not report.ok:
        raise StepFailed(f"Validation failed: {report.summary()}\n\n{markdown}")
    return {"ok": True}


# -------------------------------------------------------------------------------------------- features
def build_features(
    transactions_dir: str,
    labels_dir: str,
    training_set_path: str,
    *,
    start: str,
    days: int,
    label_maturity_days: int = 10,
    join_engine: str = "pandas",
    settings: RelearnSettings | None = None,
    data_engine: str = "pandas",
) -> dict[str, Any]:
    """Applies the Feast repo, materializes it, bootstraps the streaming state, builds the training set.

    The point-in-time join reads the sources and TTLs registered in Feast; ``join_engine="feast"`` runs
    Feast's own ``get_historical_features`` instead (the same rows, tested; far slower on files).
    Labels are those known at the window's end. Transactions of the last ``label_maturity_days`` are
    still used for the entity features, but not as training rows: most of their chargebacks have not
    arrived yet, so they would teach the model that recent fraud is legitimate. The card holders'
    attributes (``relearn.data.cardholders.ATTRIBUTES``) are joined on as extra columns for the fairness
    report; training reads only MODEL_INPUTS, so they never reach the model. ``data_engine``: ``pandas``,
    ``spark`` (relearn.features.spark_step: same output) or ``auto`` (Spark for a large lake).
    """
    from relearn.data import io
    from relearn.features import spark_step
    from relearn.features import store as feast_store

    settings = settings or RelearnSettings()
    try:
        data_engine = spark_step.choose_engine(data_engine, transactions_dir)
    except ValueError as exc:
        raise StepFailed(str(exc)) from None
    if data_engine == "spark":
        begin, end = window(start, days)
        args = (transactions_dir, labels_dir, training_set_path)
        kwargs = {
            "begin": begin,
            "end": end,
            "label_maturity_days": label_maturity_days,
            "settings": settings,
        }
        return spark_step.build_features_spark(*args, **kwargs)
    _, end = window(start, days)
    transactions = io.read_transactions(transactions_dir)
    labels = io.read_labels(labels_dir)
    feast_store.write_feature_tables(transactions, labels, settings)
    store = feast_store.get_store(settings)
    feast_store.apply(store, settings)
    feast_store.materialize(store, end=end)
    _bootstrap_state(transactions, labels, end)
    if join_engine not in ("pandas", "feast"):
        raise StepFailed(f"join_engine must be 'pandas' or 'feast', not {join_engine!r}")
    frame = feast_store.training_set(store, transactions, labels, label_cutoff=end, engine=join_engine)
    matured = frame["event_timestamp"] < pd.Timestamp(end - timedelta(days=label_maturity_days))
    frame = with_cardholders(frame[matured].reset_index(drop=True), io.read_cardholders(transactions_dir))
    if frame.empty:
        raise StepFailed(f"No transaction is older than {label_maturity_days} days: no training rows.")
    frame.to_parquet(training_set_path, index=False)
    summary = {"rows": len(frame), "positives": int(frame["label"].sum()), "label_cutoff": end.isoformat()}
    log.info("training set built", extra=summary)
    return summary


def with_cardholders(frame: pd.DataFrame, holders: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each row's card-holder attributes; holders missing from the table are "unknown"."""
    from relearn.data.cardholders import ATTRIBUTES, UNKNOWN

    names = list(ATTRIBUTES)
    joined = frame.merge(holders[["user_id", *names]], on="user_id", how="left", validate="many_to_one")
    joined[names] = joined[names].fillna(UNKNOWN)
    return joined


def _bootstrap_state(transactions: pd.DataFrame, labels: pd.DataFrame, end: datetime) -> None:
    """Fill the transformers' streaming state (``RELEARN_STATE_*``) with the window's events.

    Idempotent (a set of events by transaction id): it adds what the stream has not seen and never
    replaces a fresher streamed value, so it is safe while the transformers serve.
    """
    from relearn.features.backfill import bootstrap_configured

    bootstrap_configured(transactions, labels, end)


# ------------------------------------------------------------------------------------------------ gate
