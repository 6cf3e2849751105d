"""The training pipeline's train and register steps (re-exported by :mod:`relearn.steps`).

Plain functions over files, like the other steps: the KFP components hand over artifact paths and
parameters; :func:`splits` and :func:`tracking` are shared with :mod:`relearn.evaluation`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from relearn.errors import StepFailed
from relearn.settings import RelearnSettings

log = logging.getLogger("relearn.steps")  # one logger for all the pipeline's steps


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
