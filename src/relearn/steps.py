"""The training pipeline's steps as plain functions over files.

The KFP components in ``components/`` are thin wrappers around these: they hand over artifact paths and
parameters, nothing else. Keeping the logic here makes every step testable without Kubeflow and lets the
same code run in a Kubeflow pod and in a ``kfp.local`` subprocess.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel

from relearn.errors import StepFailed
from relearn.logs import configure_logging
from relearn.settings import RelearnSettings

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


def window(start: str, days: int) -> tuple[datetime, datetime]:
    """The data window ``[start, start + days)`` in UTC."""
    begin = datetime.fromisoformat(start)
    begin = begin.replace(tzinfo=UTC) if begin.tzinfo is None else begin.astimezone(UTC)
    return begin, begin + timedelta(days=days)


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


# ----------------------------------------------------------------------------------------------- train
class TrainStepParams(BaseModel):
    """Training hyper-parameters, the time split and the processes, as the pipeline passes them."""

    epochs: int = 30
    batch_size: int = 2048
    learning_rate: float = 0.002
    patience: int = 5
    seed: int = 7
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    workers: int = 1
    distributed_backend: str = "auto"
    image: str = ""
    train_mode: str = "scratch"  # relearn.model.warm: auto (the retraining policy), warm or scratch
    replay_fraction: float = 0.1
    scratch_every: int = 5
    params_from: str = ""  # "best": the newest Optuna study's best hyper-parameters (relearn.model.tuning)


def splits(
    training_set_path: str, val_fraction: float, test_fraction: float, columns: list[str] | None = None
):
    """Train, validation and test rows of a training set, split by time (the test rows the latest)."""
    from relearn.model.train import time_split

    return time_split(pd.read_parquet(training_set_path, columns=columns), val_fraction, test_fraction)


def tracking(settings: RelearnSettings):
    """The ``mlflow`` module, set up for these settings' tracking server and registry."""
    import mlflow

    from relearn.model.registry import setup_mlflow

    setup_mlflow(settings)
    return mlflow


def train(
    training_set_path: str, model_dir: str, params: TrainStepParams, settings: RelearnSettings | None = None
) -> dict[str, Any]:
    """Trains the model on the earliest part of the window, early-stopping on the next part.

    With ``params.workers`` > 1 the training is data-parallel (:mod:`relearn.model.distributed`): that many
    torchrun processes on this machine, or the pods of a PyTorchJob in a cluster (``distributed_backend``:
    ``auto`` picks the PyTorchJob inside a Kubeflow Pipelines pod). Rank 0 logs into this step's MLflow
    run; the model and metrics are those of one worker, up to floating-point summation order.
    """
    from relearn.model import train as training

    settings = settings or RelearnSettings()
    if params.workers < 1:
        raise StepFailed(f"workers must be at least 1, not {params.workers}")
    # One worker reads everything; several read shards, so the step checks the labels alone here.
    columns = None if params.workers == 1 else ["event_timestamp", "label"]
    train_df, val_df, _ = splits(training_set_path, params.val_fraction, params.test_fraction, columns)
    if train_df["label"].sum() == 0 or val_df["label"].sum() == 0:
        raise StepFailed("The training or validation split has no labelled fraud: widen the data window.")
    train_params = training.TrainParams(
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.learning_rate,
        patience=params.patience,
        seed=params.seed,
    )
    tuned_from = ""
    if params.params_from:
        train_params, tuned_from = _tuned(params.params_from, train_params, settings)
    mlflow = tracking(settings)
    plan = _warm_plan(params, train_df, train_params, settings)
    with mlflow.start_run() as run:
        mlflow.log_params({"val_fraction": params.val_fraction, "test_fraction": params.test_fraction})
        mlflow.log_params({"train_rows": len(train_df), "val_rows": len(val_df), "workers": params.workers})
        mlflow.log_params({"warm_new_rows": plan.new_rows, "warm_replay_rows": plan.replay_rows})
        mlflow.set_tags({**plan.tags(), **({"params_from": tuned_from} if tuned_from else {})})
        if params.workers == 1:
            from relearn.model import net

            result = training.train(plan.train_df, val_df, plan.params, init=plan.init)
            training.log_training(result, plan.params)
            net.save_model(model_dir, result.net, result.preprocessor, {"mlflow_run_id": run.info.run_id})
        else:
            _train_distributed(training_set_path, model_dir, params, train_params, run.info.run_id, settings)
    logged = mlflow.MlflowClient(settings.tracking_uri()).get_run(run.info.run_id).data.metrics
    metrics = {name: float(logged[name]) for name in ("best_val_pr_auc", "best_epoch", "samples_per_second")}
    return {"run_id": run.info.run_id, "metrics": metrics}


def _tuned(params_from: str, train_params: Any, settings: RelearnSettings) -> tuple[Any, str]:
    """``train_params`` with the best hyper-parameters of the newest tuning study, and that study's run."""
    from relearn.model import tuning

    if params_from != "best":
        raise StepFailed(f'params_from must be "" or "best", not {params_from!r}')
    try:
        best, run_id = tuning.best_params(settings)
    except LookupError as exc:
        raise StepFailed(f"{exc}: run `make tune` first") from None
    log.info("tuned hyper-parameters", extra={"params": best, "tuning_run": run_id})
    return train_params.model_copy(update=best), f"tuning run {run_id}"


def _warm_plan(params: TrainStepParams, train_df: pd.DataFrame, train_params: Any, settings: RelearnSettings):
    """Warm start or from scratch (relearn.model.warm): a refused warm start fails the step readably."""
    from relearn.model import warm

    try:
        policy = warm.RetrainPolicy(
            mode=params.train_mode, replay_fraction=params.replay_fraction, scratch_every=params.scratch_every
        )
        champion = warm.load_champion(settings) if policy.mode != "scratch" and params.workers == 1 else None
        return warm.plan(policy, champion, train_df, train_params, params.workers)
    except ValueError as exc:  # WarmStartRefused, or pydantic's ValidationError of a bad setting
        raise StepFailed(f"Training settings refused: {exc}") from None


def _train_distributed(
    training_set_path: str,
    model_dir: str,
    params: TrainStepParams,
    train_params: Any,
    run_id: str,
    settings: RelearnSettings,
) -> None:
    """Runs ``params.workers`` training processes; rank 0 leaves the model in ``model_dir``."""
    from relearn.model import distributed

    try:
        backend = distributed.resolve_backend(params.distributed_backend)
    except ValueError as exc:
        raise StepFailed(str(exc)) from None
    options = distributed.WorkerOptions(
        training_set=training_set_path,
        run_id=run_id,
        model_dir=Path(model_dir),
        params=train_params,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
    )
    log.info("distributed training", extra={"workers": params.workers, "backend": backend})
    try:
        if backend == "local":
            distributed.torchrun(params.workers, options)
        else:
            from relearn.model import pytorchjob

            pytorchjob.train_in_cluster(params.workers, options, image=params.image, settings=settings)
    except distributed.TrainingFailed as exc:
        raise StepFailed(f"Distributed training failed: {exc}") from None


# -------------------------------------------------------------------------------------------- evaluate
def register(
    model_dir: str,
    training_set_path: str,
    evaluation_path: str,
    *,
    run_id: str,
    lineage: dict[str, str],
    settings: RelearnSettings | None = None,
) -> str:
    """Registers the trained model as a new MLflow version (alias ``challenger``); returns the version."""
    from relearn.features.spec import FEATURE_SERVICE
    from relearn.model import explain, registry, warm

    settings = settings or RelearnSettings()
    evaluation = json.loads(Path(evaluation_path).read_text())
    importance = evaluation.get("permutation_importance")
    train_sample = pd.read_parquet(training_set_path)
    lineage = {**warm.run_lineage(settings, run_id), **lineage}  # warm_started_from, train_mode, its reason
    info = registry.register(
        model_dir,
        settings=settings,
        run_id=run_id,
        metrics=evaluation["headline"],
        train_sample=train_sample,
        lineage={**lineage, "feature_service": FEATURE_SERVICE},
        threshold=evaluation["threshold"],
        importance=explain.importance_means(importance) if importance else None,
    )
    log.info("registered", extra={"model": info.name, "version": info.version, "aliases": info.aliases})
    return str(info.version)


# ------------------------------------------------------------------------------------------------ gate
