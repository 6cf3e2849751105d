"""The training pipeline's steps as plain functions over files.

The KFP components in ``components/`` are thin wrappers around these: they hand over artifact paths and
parameters, nothing else. Keeping the logic here makes every step testable without Kubeflow and lets the
same code run in a Kubeflow pod and in a ``kfp.local`` subprocess.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel

from relearn.logs import configure_logging
from relearn.settings import RelearnSettings

log = logging.getLogger("relearn.steps")
T = TypeVar("T")


class StepFailed(Exception):
    """Bad input data: the step stops the run with this readable message instead of a stack trace."""


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
def validate(transactions_dir: str, report_path: str, *, start: str, days: int) -> dict[str, Any]:
    """Checks the batch against the expectations; raises :class:`StepFailed` with the report if it fails."""
    from relearn.data import io
    from relearn.data.validate import Expectations
    from relearn.data.validate import validate as check

    begin, end = window(start, days)
    transactions = io.read_transactions(transactions_dir)
    report = check(transactions, Expectations(), window_start=begin, window_end=end)
    markdown = report.to_markdown()
    Path(report_path).write_text(markdown)
    Path(report_path).with_suffix(".html").write_text(report.to_html())
    log.info("validated", extra={"ok": report.ok, "rows": len(transactions)})
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
) -> dict[str, Any]:
    """Applies the Feast repo, materializes it, bootstraps the streaming state, builds the training set.

    The point-in-time join reads the sources and TTLs registered in Feast; ``join_engine="feast"`` runs
    Feast's own ``get_historical_features`` instead (the same rows, tested; far slower on files).
    Labels are those known at the window's end. Transactions of the last ``label_maturity_days`` are
    still used for the entity features, but not as training rows: most of their chargebacks have not
    arrived yet, so they would teach the model that recent fraud is legitimate. The card holders'
    attributes (``relearn.data.cardholders.ATTRIBUTES``) are joined on as extra columns for the fairness
    report; training reads only MODEL_INPUTS, so they never reach the model.
    """
    from relearn.data import io
    from relearn.features import store as feast_store

    settings = settings or RelearnSettings()
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
    from relearn.features.backfill import bootstrap
    from relearn.features.state import open_state

    state = open_state()
    try:
        bootstrap(state, transactions, labels, end)
    finally:
        state.close()


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


def _splits(
    training_set_path: str, val_fraction: float, test_fraction: float, columns: list[str] | None = None
):
    from relearn.model.train import time_split

    return time_split(pd.read_parquet(training_set_path, columns=columns), val_fraction, test_fraction)


def _mlflow(settings: RelearnSettings):
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
    train_df, val_df, _ = _splits(training_set_path, params.val_fraction, params.test_fraction, columns)
    if train_df["label"].sum() == 0 or val_df["label"].sum() == 0:
        raise StepFailed("The training or validation split has no labelled fraud: widen the data window.")
    train_params = training.TrainParams(
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.learning_rate,
        patience=params.patience,
        seed=params.seed,
    )
    mlflow = _mlflow(settings)
    with mlflow.start_run() as run:
        mlflow.log_params({"val_fraction": params.val_fraction, "test_fraction": params.test_fraction})
        mlflow.log_params({"train_rows": len(train_df), "val_rows": len(val_df), "workers": params.workers})
        if params.workers == 1:
            from relearn.model import net

            result = training.train(train_df, val_df, train_params)
            training.log_training(result, train_params)
            net.save_model(model_dir, result.net, result.preprocessor, {"mlflow_run_id": run.info.run_id})
        else:
            _train_distributed(training_set_path, model_dir, params, train_params, run.info.run_id, settings)
    logged = mlflow.MlflowClient(settings.tracking_uri()).get_run(run.info.run_id).data.metrics
    metrics = {name: float(logged[name]) for name in ("best_val_pr_auc", "best_epoch", "samples_per_second")}
    return {"run_id": run.info.run_id, "metrics": metrics}


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
def evaluate(
    training_set_path: str,
    model_dir: str,
    report_path: str,
    evaluation_path: str,
    *,
    run_id: str,
    alert_budget: float,
    val_fraction: float,
    test_fraction: float,
    settings: RelearnSettings | None = None,
) -> dict[str, float]:
    """Scores the time-based holdout and compares the model with a baseline and the current champion."""
    from relearn.model import behavioral, net, registry, report, stats
    from relearn.model import evaluate as ev
    from relearn.model.gate import GateParams

    settings = settings or RelearnSettings()
    train_df, _, test_df = _splits(training_set_path, val_fraction, test_fraction)
    model, preprocessor, _ = net.load_model(model_dir)
    scores = net.score(model, preprocessor, test_df)
    candidate = ev.evaluate(scores, test_df, alert_budget)
    baseline_scores = ev.baseline(train_df, test_df)
    baseline = ev.evaluate(baseline_scores, test_df, alert_budget)
    champion, champion_scores, champion_version = None, None, None
    loaded = registry.load_champion(settings)
    if loaded is not None:
        champion_model, champion_version = loaded
        champion_scores = champion_model.predict(test_df)["score"].to_numpy()
        champion = ev.evaluate(champion_scores, test_df, alert_budget)
    gate_params = GateParams()
    paired = None  # both models resampled on the same rows: what the gate reads
    if champion_scores is not None:
        n_boot, seed = gate_params.n_boot, gate_params.seed
        paired = ev.paired(scores, champion_scores, test_df, alert_budget, n_boot, seed)
    comparison = ev.compare(candidate, baseline, champion)
    # The declared behavioral suite on cases drawn from the same holdout, at the candidate's threshold.
    behavior = behavioral.run_suite(
        lambda frame: net.score(model, preprocessor, frame),
        test_df,
        candidate["threshold"],
        seed=gate_params.seed,
    )
    plots_dir = Path(evaluation_path).parent / "plots"
    by_model = {"candidate": (scores, candidate), "baseline": (baseline_scores, baseline)}
    if champion is not None:
        by_model[f"champion (v{champion_version})"] = (champion_scores, champion)
    labels = test_df["label"].to_numpy()
    plots = report.make_plots(
        plots_dir,
        {name: (model_scores, labels) for name, (model_scores, _) in by_model.items()},
        {name: model_metrics for name, (_, model_metrics) in by_model.items()},
        alert_budget=alert_budget,
    )
    html = report.write_report(
        plots_dir,
        candidate,
        comparison,
        plots,
        paired=paired,
        confidence=gate_params.confidence,
        behavioral=behavior,
    )
    shutil.copyfile(html, report_path)
    headline = {
        "pr_auc": candidate["pr_auc"],
        "recall_at_budget": candidate["recall_at_budget"],
        "precision_at_budget": candidate["precision_at_budget"],
        "fraud_amount_caught": candidate["fraud_amount_caught"],
        "baseline_pr_auc": baseline["pr_auc"],
        "baseline_recall_at_budget": baseline["recall_at_budget"],
    }
    evaluation = {
        "candidate": candidate,
        "baseline": baseline,
        "champion": champion,
        "champion_version": champion_version,
        "paired": paired,
        "behavioral": behavior,
        "comparison": comparison,
        "threshold": candidate["threshold"],
        "versus_baseline": versus_baseline(candidate, baseline),
        "alert_budget": alert_budget,
        "headline": headline,
    }
    Path(evaluation_path).write_text(json.dumps(evaluation, indent=2, default=float))
    mlflow = _mlflow(settings)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in headline.items() if v is not None})
        if paired is not None:  # the differences with the champion and their bounds, as run metrics
            rows = stats.summary(paired, gate_params.confidence)
            mlflow.log_metrics(
                {
                    f"vs_champion_{m}_{k}": row[k]
                    for m, row in rows.items()
                    for k in ("difference", "lower", "upper")
                    if row[k] is not None
                }
            )
        rates = {name: test["failure_rate"] for name, test in behavior["tests"].items()}
        mlflow.log_metrics({f"behavioral_{n}_failure_rate": r for n, r in rates.items() if r is not None})
        mlflow.set_tags({f"behavioral.{n}.cases": t["cases"] for n, t in behavior["tests"].items()})
        mlflow.log_artifact(report_path, artifact_path="evaluation")
        mlflow.log_artifacts(str(plots_dir), artifact_path="evaluation/plots")
    return headline


def versus_baseline(candidate: dict[str, Any], baseline: dict[str, Any]) -> str:
    """One sentence: does the model beat the baseline, and if not, by how much it falls short."""
    gaps = {m: candidate[m] - baseline[m] for m in ("pr_auc", "recall_at_budget")}
    numbers = ", ".join(f"{m} {candidate[m]:.3f} vs {baseline[m]:.3f}" for m in gaps)
    if all(gap >= 0 for gap in gaps.values()):
        return f"beats the baseline ({numbers})"
    behind = " and ".join(m for m, gap in gaps.items() if gap < 0)
    return f"does not beat the baseline on {behind} ({numbers})"


# -------------------------------------------------------------------------------------------- register
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
    from relearn.model import registry

    settings = settings or RelearnSettings()
    evaluation = json.loads(Path(evaluation_path).read_text())
    train_sample = pd.read_parquet(training_set_path)
    info = registry.register(
        model_dir,
        settings=settings,
        run_id=run_id,
        metrics=evaluation["headline"],
        train_sample=train_sample,
        lineage={**lineage, "feature_service": FEATURE_SERVICE},
        threshold=evaluation["threshold"],
    )
    log.info("registered", extra={"model": info.name, "version": info.version, "aliases": info.aliases})
    return str(info.version)


# ------------------------------------------------------------------------------------------------ gate
def gate(
    evaluation_path: str,
    decision_path: str,
    *,
    model_version: str,
    min_improvement: float,
    max_slice_regression: float,
    max_behavioral_failure_rate: float = 0.05,
    settings: RelearnSettings | None = None,
) -> tuple[bool, str]:
    """Decides whether the challenger should replace the champion, and writes the decision as Markdown.

    The model version is tagged with it too (``gate.*``: verdict, each difference and its bounds).
    """
    from relearn.model import registry
    from relearn.model.gate import GateParams
    from relearn.model.gate import gate as decide

    evaluation = json.loads(Path(evaluation_path).read_text())
    params = GateParams(
        min_improvement=min_improvement,
        max_slice_regression=max_slice_regression,
        max_behavioral_failure_rate=max_behavioral_failure_rate,
    )
    decision = decide(
        evaluation["candidate"],
        evaluation["champion"],
        params,
        baseline_metrics=evaluation["baseline"],
        paired=evaluation.get("paired"),
        behavioral=evaluation.get("behavioral"),
    )
    verdict = "PASSED" if decision.passed else "FAILED"
    champion = evaluation["champion_version"] or f"none before this run (version {model_version} became it)"
    lines = [f"# Gate: {verdict}\n", f"- challenger: version {model_version}", f"- champion: {champion}"]
    lines.append(f"- reason: {decision.reason}")
    if decision.details.get("paired"):
        bound = f"{100 * params.confidence:g} % bound"
        header = f"| metric | challenger | champion | difference | lower {bound} | upper {bound} | role |"
        lines += ["", header]
        lines.append("|---|---|---|---|---|---|---|")
        for name, row in decision.details["paired"].items():
            cells = [_cell(row[k]) for k in ("candidate", "champion", "difference", "lower", "upper")]
            lines.append(f"| {name} | {' | '.join(cells)} | {row['role']} |")
    if decision.details.get("behavioral"):
        lines += ["", "| behavioral test | cases | failure rate | max | verdict |", "|---|---|---|---|---|"]
        for name, row in decision.details["behavioral"].items():
            rate = "–" if row["failure_rate"] is None else f"{row['failure_rate']:.1%}"
            state = {True: "passed", False: "FAILED", None: "unknown (no cases)"}[row["passed"]]
            lines.append(f"| {name} | {row['cases']} | {rate} | {row['max_failure_rate']:.0%} | {state} |")
    Path(decision_path).write_text("\n".join(lines) + "\n")
    registry.tag_version(settings or RelearnSettings(), model_version, decision.tags())
    return decision.passed, f"{verdict}: {decision.reason}"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"
