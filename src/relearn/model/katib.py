r"""Tuning in the cluster: a Katib ``Experiment`` whose trials run relearn's own training code.

The experiment mirrors the local Optuna study (:mod:`relearn.model.tuning`): the same search space, TPE
suggestions, median stopping on the validation PR-AUC, and trials that call the same
:func:`relearn.model.train.train` through ``python -m relearn.model.katib trial``. A trial prints
``epoch=N val_pr_auc=X`` after every epoch, which Katib's StdOut metrics collector parses with its default
filter (``([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?([Ee][+-]?\\d+)?)``), so the median-stop rule sees the
curve. Render with ``python -m relearn.model.katib render > experiment.yaml`` and ``kubectl apply`` it.

Katib v1beta1 (kubeflow-katib 0.19): tests validate the rendered object with the SDK's models
(``kubeflow-katib-api``); the published CRD schema is open.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import CliSubCommand, get_subcommand

from relearn import commands
from relearn.commands import Command, command_config
from relearn.model.tuning import SearchSpace, parse_hidden

API_VERSION, KIND = "kubeflow.org/v1beta1", "Experiment"
CONTAINER = "training"
OBJECTIVE = "val_pr_auc"
# Katib name -> (trial parameter, TrainParams field); Katib names allow no underscore in trial parameters.
PARAMETERS = {
    "lr": "learningRate",
    "weight_decay": "weightDecay",
    "dropout": "dropout",
    "batch_size": "batchSize",
    "hidden": "hidden",
}


def experiment(
    space: SearchSpace,
    *,
    name: str,
    namespace: str,
    image: str,
    training_set: str,
    trials: int = 20,
    parallel: int = 2,
    epochs: int = 15,
    patience: int = 4,
    seed: int = 7,
    config_map: str = "relearn-pipeline-env",
) -> dict[str, Any]:
    """The Experiment object (a dict, as ``kubectl apply`` takes it).

    Args:
        space: The search space (the local study's).
        name: Experiment name.
        namespace: Where it runs: the KFP run namespace, which holds ``config_map``.
        image: The pipeline image (it holds relearn).
        training_set: A Parquet path or URI the trial pods read.
        trials: Most trials.
        parallel: Trials at once.
        epochs: Most epochs of a trial.
        patience: Early-stopping patience of a trial.
        seed: Seed of the TPE suggestions and of every trial's training.
        config_map: relearn's settings as env vars (MLflow, object store), as the pipeline's steps get them.
    """
    if trials < 1 or not 1 <= parallel <= trials:
        raise ValueError(
            f"trials must be >= 1 and parallel in [1, trials], not trials={trials}, parallel={parallel}"
        )
    parameters = [
        _double("lr", space.lr, log=True),
        _double("weight_decay", space.weight_decay, log=True),
        _double("dropout", space.dropout, log=False),
        {
            "name": "batch_size",
            "parameterType": "categorical",
            "feasibleSpace": {"list": [str(b) for b in space.batch_size]},
        },
        {"name": "hidden", "parameterType": "categorical", "feasibleSpace": {"list": list(space.hidden)}},
    ]
    command = ["python", "-m", "relearn.model.katib", "trial", "--training-set", training_set]
    command += ["--epochs", str(epochs), "--patience", str(patience), "--seed", str(seed)]
    for field, trial_name in PARAMETERS.items():
        command += [f"--{field.replace('_', '-')}", f"${{trialParameters.{trial_name}}}"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},  # the Job must finish
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": command,
                            "envFrom": [{"configMapRef": {"name": config_map}}],
                            "resources": {
                                "requests": {"cpu": "1", "memory": "2Gi"},
                                "limits": {"memory": "4Gi"},
                            },
                        }
                    ],
                },
            },
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "relearn"},
        },
        "spec": {
            "objective": {
                "type": "maximize",
                "objectiveMetricName": OBJECTIVE,
                "additionalMetricNames": ["epoch"],
            },
            "algorithm": {
                "algorithmName": "tpe",
                "algorithmSettings": [{"name": "random_state", "value": str(seed)}],
            },
            # Katib's median stop: a trial below the median of completed trials' curves at the same epoch.
            "earlyStopping": {
                "algorithmName": "medianstop",
                "algorithmSettings": [
                    {"name": "min_trials_required", "value": "2"},
                    {"name": "start_step", "value": "2"},
                ],
            },
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parallelTrialCount": parallel,
            "maxTrialCount": trials,
            "maxFailedTrialCount": max(1, trials // 4),
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "trialParameters": [
                    {"name": trial_name, "reference": field, "description": f"TrainParams.{field}"}
                    for field, trial_name in PARAMETERS.items()
                ],
                "trialSpec": job,
            },
        },
    }


def _double(name: str, bounds: tuple[float, float], *, log: bool) -> dict[str, Any]:
    space = {"min": repr(float(bounds[0])), "max": repr(float(bounds[1]))}
    if log:
        space["distribution"] = "logUniform"
    return {"name": name, "parameterType": "double", "feasibleSpace": space}


class Render(BaseModel):
    """Print the Experiment as YAML (kubectl apply -f -)."""

    name: str = Field("relearn-tune", description="Experiment name.")
    namespace: str = Field("kubeflow-user-example-com", description="Namespace (the KFP run namespace).")
    image: str = Field(
        ..., description="Trial image: the pipeline image, e.g. ghcr.io/relearn/relearn-pipeline:<version>."
    )
    training_set: str = Field(
        ..., description="Training set Parquet URI the trial pods read (s3://..., gs://...)."
    )
    trials: int = Field(20, ge=1)
    parallel: int = Field(2, ge=1)
    epochs: int = Field(15, ge=1)
    patience: int = Field(4, ge=1)
    seed: int = Field(7, ge=0)
    space: SearchSpace = Field(
        default_factory=SearchSpace, description="Search space (JSON), as the local study's."
    )

    def cli_cmd(self) -> None:
        """Print the Experiment."""
        import yaml

        doc = experiment(self.space, **self.model_dump(exclude={"space"}))
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))


class Trial(BaseModel):
    """One Katib trial: train with these hyper-parameters, print epoch=N val_pr_auc=X per epoch."""

    training_set: str = Field(..., description="Training set Parquet path or URI.")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(15, ge=1)
    patience: int = Field(4, ge=1)
    seed: int = Field(7, ge=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(2048, ge=1)
    hidden: str = Field("64,32", description="Layer widths, e.g. 64,32.")

    def cli_cmd(self) -> None:
        """Run the trial."""
        run_trial(self)


def run_trial(trial: Trial, out: Any = None) -> float:
    """Train as the train step does (same code, same split) and print the curve; returns the best value."""
    import pandas as pd

    from relearn.model.train import TrainParams, time_split, train

    out = out or sys.stdout
    train_df, val_df, _ = time_split(
        pd.read_parquet(trial.training_set), trial.val_fraction, trial.test_fraction
    )
    params = TrainParams(
        epochs=trial.epochs,
        patience=trial.patience,
        seed=trial.seed,
        lr=trial.lr,
        weight_decay=trial.weight_decay,
        dropout=trial.dropout,
        batch_size=trial.batch_size,
        hidden=parse_hidden(trial.hidden),
        progress=False,
    )

    def report(entry: dict[str, float]) -> None:
        print(f"epoch={int(entry['epoch'])} {OBJECTIVE}={entry['val_pr_auc']:.6f}", file=out, flush=True)

    result = train(train_df, val_df, params, report)
    return result.best_val_pr_auc


class KatibCli(Command):
    """Katib for relearn: render the tuning Experiment, or run one of its trials."""

    model_config = command_config("python -m relearn.model.katib", "RELEARN_KATIB_")

    render: CliSubCommand[Render] = Field(description="Print the Experiment as YAML.")
    trial: CliSubCommand[Trial] = Field(description="Run one trial (what the trial Jobs start).")

    def cli_cmd(self) -> None:
        """Run the chosen subcommand (its output on stdout, the JSON logs on stderr)."""
        self.start_logging()
        get_subcommand(self).cli_cmd()


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.model.katib``: exit 2 naming a bad option before anything runs."""
    commands.run(KatibCli, argv, "katib")


if __name__ == "__main__":
    main()
