"""Hyper-parameter tuning with Optuna: TPE sampling, median pruning on validation PR-AUC, nested MLflow runs.

Each trial trains with :func:`relearn.model.train.train` (the code the train step runs) on the training
split and reports the validation PR-AUC after every epoch; the median pruner stops a trial whose curve falls
below the median of earlier trials at the same epoch. The first trial is the default hyper-parameters, so
the study says whether tuning beat them. The study is a parent MLflow run (tag ``relearn.tuning=study``)
whose params are the best trial's; every trial is a child run (``mlflow.parentRunId``) with its curve.
The train step reads the newest study's params with ``params_from=best``. The test split is never read.

``python -m relearn.model.tuning --help``; ``make tune``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.model.train import TrainParams
from relearn.model.tuning_report import write_report
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)

STUDY_TAG = "relearn.tuning"  # "study" on the parent run, "trial" on its children
TUNED = ("lr", "weight_decay", "dropout", "batch_size", "hidden")  # the TrainParams a study sets


def parse_hidden(text: str) -> tuple[int, ...]:
    """Layer widths from "64,32" (a categorical choice must be a plain value: Optuna stores it)."""
    widths = tuple(int(part) for part in str(text).strip("()[] ").split(",") if part.strip())
    if not widths or min(widths) < 1:
        raise ValueError(f"hidden layers must be positive widths such as '64,32', not {text!r}")
    return widths


class SearchSpace(BaseModel):
    """Ranges (low, high) sampled on a log or linear scale, and choices; every field is validated."""

    lr: tuple[float, float] = Field((3e-4, 1e-2), description="Adam learning rate, log scale.")
    weight_decay: tuple[float, float] = Field((1e-7, 1e-3), description="L2 penalty, log scale.")
    dropout: tuple[float, float] = Field((0.0, 0.3), description="Dropout after each hidden layer.")
    batch_size: tuple[int, ...] = Field((512, 1024, 2048, 4096), description="Batch sizes to choose from.")
    hidden: tuple[str, ...] = Field(("32,16", "64,32", "128,64", "64"), description="Layer widths choices.")

    @field_validator("lr", "weight_decay")
    @classmethod
    def _log_range(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError(f"search space {info.field_name}: needs 0 < low < high, got {value}")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1] < 1:
            raise ValueError(f"search space dropout: needs 0 <= low <= high < 1, got {value}")
        return value

    @field_validator("batch_size", "hidden")
    @classmethod
    def _choices(cls, value: tuple[Any, ...], info: Any) -> tuple[Any, ...]:
        if not value:
            raise ValueError(f"search space {info.field_name}: no choices (empty)")
        if info.field_name == "batch_size" and min(value) < 1:
            raise ValueError(f"search space batch_size: sizes must be positive, got {value}")
        if info.field_name == "hidden":
            for choice in value:
                parse_hidden(choice)
        return value

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One point of the space for an Optuna trial, as TrainParams fields."""
        return {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True),
            "dropout": trial.suggest_float("dropout", *self.dropout),
            "batch_size": trial.suggest_categorical("batch_size", list(self.batch_size)),
            "hidden": parse_hidden(trial.suggest_categorical("hidden", list(self.hidden))),
        }

    def point(self, params: TrainParams) -> dict[str, Any] | None:
        """``params`` as a point of the space (to enqueue the defaults), or None when outside it."""
        hidden = ",".join(str(w) for w in params.hidden)
        inside = (
            self.lr[0] <= params.lr <= self.lr[1]
            and self.weight_decay[0] <= params.weight_decay <= self.weight_decay[1]
            and self.dropout[0] <= params.dropout <= self.dropout[1]
            and params.batch_size in self.batch_size
            and hidden in self.hidden
        )
        values = {k: getattr(params, k) for k in ("lr", "weight_decay", "dropout", "batch_size")}
        return {**values, "hidden": hidden} if inside else None


@dataclass
class TuneResult:
    """What a study found and where it is recorded."""

    best_params: dict[str, Any]
    best_value: float
    default_value: float  # NaN when the defaults lie outside the space
    states: dict[str, int]
    parent_run_id: str
    artifacts: list[Path] = field(default_factory=list)


def tune(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    *,
    space: SearchSpace | None = None,
    trials: int = 20,
    jobs: int = 1,
    base: TrainParams | None = None,
    seed: int = 7,
    settings: RelearnSettings | None = None,
    report_dir: Path | None = None,
) -> TuneResult:
    """Run a study of ``trials`` trials (``jobs`` at a time, in threads) and record it in MLflow.

    Args:
        train_df: Rows to train on (the train step's training split).
        val_df: Validation rows: the objective is the best validation PR-AUC of a trial.
        space: What to search; defaults around TrainParams' defaults.
        trials: Trials to run, the defaults' included.
        jobs: Trials run at once (threads: torch releases the GIL; each trains on one thread).
        base: Fixed parameters (epochs, patience, seed); the study sets the fields in ``TUNED``.
        seed: Seed of the TPE sampler.
        settings: Where MLflow lives.
        report_dir: Where the report and plots go (default <home>/tuning).
    """
    import optuna
    from mlflow import MlflowClient

    from relearn.model.registry import setup_mlflow
    from relearn.model.train import train

    space, base = space or SearchSpace(), base or TrainParams()
    settings = settings or RelearnSettings()
    if trials < 1 or jobs < 1:
        raise ValueError(f"trials and jobs must be at least 1, not trials={trials}, jobs={jobs}")
    experiment_id = setup_mlflow(settings)
    client = MlflowClient(settings.tracking_uri())
    parent = client.create_run(experiment_id, run_name="tune", tags={STUDY_TAG: "running"}).info.run_id
    _log_params(client, parent, {"trials": trials, "jobs": jobs, "sampler": "TPE", "pruner": "median"})
    client.log_dict(parent, space.model_dump(mode="json"), "tuning/search_space.json")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, trials // 3))),
        # Prune from epoch 2 on (the first is noisy), once two trials have finished.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    defaults = space.point(base)
    if defaults is not None:
        study.enqueue_trial(defaults)

    def objective(trial: optuna.Trial) -> float:
        chosen = space.suggest(trial)
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{trial.number}",
            tags={"mlflow.parentRunId": parent, STUDY_TAG: "trial"},
        ).info.run_id
        _log_params(client, child, chosen)

        def report(entry: dict[str, float]) -> None:
            epoch = int(entry["epoch"])
            client.log_metric(child, "val_pr_auc", entry["val_pr_auc"], step=epoch)
            trial.report(entry["val_pr_auc"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"val PR-AUC {entry['val_pr_auc']:.4f} below the median at epoch {epoch}"
                )

        status = "FAILED"
        try:
            result = train(train_df, val_df, base.model_copy(update={**chosen, "progress": False}), report)
            client.log_metric(child, "best_val_pr_auc", result.best_val_pr_auc)
            status = "FINISHED"
            return result.best_val_pr_auc
        except optuna.TrialPruned:
            status = "KILLED"
            raise
        finally:
            client.set_tag(
                child, "optuna.state", {"FINISHED": "complete", "KILLED": "pruned"}.get(status, "fail")
            )
            client.set_terminated(child, status)

    try:
        study.optimize(objective, n_trials=trials, n_jobs=jobs)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        client.set_terminated(parent, "FAILED")
        raise RuntimeError("no trial completed: every trial was pruned or failed")
    best = {**study.best_params, "hidden": parse_hidden(study.best_params["hidden"])}
    default_value = (
        study.trials[0].value if defaults is not None and study.trials[0].value is not None else math.nan
    )
    states = dict(Counter(trial.state.name.lower() for trial in study.trials))
    _log_params(client, parent, {k: ",".join(map(str, v)) if k == "hidden" else v for k, v in best.items()})
    metrics = {"best_val_pr_auc": study.best_value, **{f"trials_{k}": v for k, v in states.items()}}
    if not math.isnan(default_value):
        metrics["default_val_pr_auc"] = default_value
    for name, value in metrics.items():
        client.log_metric(parent, name, float(value))

    report_dir = Path(report_dir or settings.home / "tuning")
    artifacts = write_report(study, best, default_value, report_dir)
    for path in artifacts:
        client.log_artifact(parent, str(path), "tuning")
    client.set_tag(parent, STUDY_TAG, "study")
    client.set_terminated(parent, "FINISHED")
    log.info(
        "tuned", extra={"best": study.best_value, "default": default_value, "states": states, "run": parent}
    )
    return TuneResult(best, study.best_value, default_value, states, parent, artifacts)


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def best_params(settings: RelearnSettings) -> tuple[dict[str, Any], str]:
    """The newest finished study's best params (TrainParams fields) and its run id.

    Raises:
        LookupError: No finished study in the experiment.
    """
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = 'study' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiment
        else []
    )
    if not runs:
        raise LookupError(f"params_from=best: no finished tuning study in experiment {settings.experiment!r}")
    params = runs[0].data.params
    values = {
        "lr": float(params["lr"]),
        "weight_decay": float(params["weight_decay"]),
        "dropout": float(params["dropout"]),
        "batch_size": int(params["batch_size"]),
        "hidden": parse_hidden(params["hidden"]),
    }
    return values, runs[0].info.run_id


class TuneSettings(BaseSettings):
    """Tune the fraud model's hyper-parameters with Optuna on a training set; record the study in MLflow.

    Every option can also be set as an environment variable RELEARN_TUNE_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_TUNE_",
        cli_prog_name="python -m relearn.model.tuning",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    training_set: Path | None = Field(
        None, description="Training set Parquet (default: the newest `make train` run's features output)."
    )
    trials: int = Field(20, ge=1, description="Trials, the default hyper-parameters' included.")
    jobs: int = Field(1, ge=1, description="Trials at once (threads; 2 on a 2-core machine).")
    epochs: int = Field(15, ge=1, description="Most epochs of a trial.")
    patience: int = Field(4, ge=1, description="Early-stopping patience of a trial.")
    seed: int = Field(7, ge=0, description="Seed of the sampler and of every trial's training.")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="As the train step's: validation share.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="As the train step's: held out, never read.")
    space: SearchSpace = Field(default_factory=SearchSpace, description="Search space (JSON).")
    report_dir: Path | None = Field(None, description="Report and plots (default <RELEARN_HOME>/tuning).")

    @model_validator(mode="after")
    def _fractions(self) -> TuneSettings:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self

    def cli_cmd(self) -> None:
        """Run the study and print where it is recorded."""
        from relearn.logs import configure_logging
        from relearn.model.train import time_split

        configure_logging()
        settings = RelearnSettings()
        path = self.training_set or newest_training_set(settings.home)
        train_df, val_df, _ = time_split(pd.read_parquet(path), self.val_fraction, self.test_fraction)
        base = TrainParams(epochs=self.epochs, patience=self.patience, seed=self.seed, progress=False)
        result = tune(
            train_df,
            val_df,
            space=self.space,
            trials=self.trials,
            jobs=self.jobs,
            base=base,
            seed=self.seed,
            settings=settings,
            report_dir=self.report_dir,
        )
        print(f"\nrelearn tuning: {self.trials} trials on {path} ({result.states})")
        print(f"  best val PR-AUC    {result.best_value:.4f}  {result.best_params}")
        print(f"  defaults           {result.default_value:.4f}")
        print(f"  MLflow parent run  {result.parent_run_id}  (train with --params-from best)")
        print(f"  report             {result.artifacts[0]}")


def newest_training_set(home: Path) -> Path:
    """The training set of the newest local pipeline run (``make train``)."""
    found = sorted(home.glob("pipeline_runs/*/features/training_set"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(
            f"no training set under {home}/pipeline_runs: run `make train` or pass --training-set"
        )
    return found[-1]


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.model.tuning``."""
    CliApp.run(TuneSettings, cli_args=argv)


if __name__ == "__main__":
    main()
