"""Tuning with Optuna (relearn.model.tuning): a tiny real study on generated data, recorded in real MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError

from relearn import steps
from relearn.data.generator import GeneratorConfig, generate
from relearn.features import store as fstore
from relearn.model import katib, tuning
from relearn.model.train import TrainParams, time_split, train
from relearn.settings import RelearnSettings

# A wide learning-rate range: the sampler draws some hopeless trials, which the median pruner stops.
SPACE = tuning.SearchSpace(lr=(1e-5, 3e-2), batch_size=(1024, 2048), hidden=("64,32", "16"))
BASE = TrainParams(epochs=6, patience=3, seed=0, progress=False)
TRIALS = 5


@pytest.fixture(scope="module")
def training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = GeneratorConfig(days=21, n_users=800, seed=2)
    data = generate(config)
    settings = RelearnSettings(home=tmp_path_factory.mktemp("tuning-data"))
    fstore.write_feature_tables(data.transactions, data.labels, settings)
    store = fstore.get_store(settings)
    fstore.apply(store, settings)
    rows = fstore.training_set(store, data.transactions, data.labels, config.end + pd.Timedelta(days=60))
    path = settings.home / "training_set.parquet"
    rows.to_parquet(path)
    return path


@pytest.fixture
def study(training_set, settings, tmp_path) -> tuning.TuneResult:
    train_df, val_df, _ = time_split(pd.read_parquet(training_set), 0.15, 0.2)
    return tuning.tune(
        train_df,
        val_df,
        space=SPACE,
        trials=TRIALS,
        base=BASE,
        seed=1,
        settings=settings,
        report_dir=tmp_path / "report",
    )


def test_a_study_records_nested_trial_runs_pruning_and_plots(study, settings):
    client = MlflowClient(settings.tracking_uri())
    parent = client.get_run(study.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[tuning.STUDY_TAG] == "study"
    assert sum(study.states.values()) == TRIALS
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{study.parent_run_id}'"
    )
    assert len(children) == TRIALS
    by_state = {"complete": "FINISHED", "pruned": "KILLED"}
    for child in children:
        state = child.data.tags["optuna.state"]
        assert child.info.status == by_state[state], (state, child.info.status)
        curve = client.get_metric_history(child.info.run_id, "val_pr_auc")
        assert [m.step for m in curve] == list(range(1, len(curve) + 1))  # reported every epoch
        if state == "pruned":
            assert len(curve) < BASE.epochs and "best_val_pr_auc" not in child.data.metrics
    # Measured with these seeds: 3 complete, 2 pruned at epoch 2 (learning rates of 6e-5 and 2e-4).
    assert study.states.get("pruned", 0) >= 1, study.states

    # Trial 0 is the defaults; the parent's params are the best trial's, its metrics the comparison.
    assert parent.data.metrics["default_val_pr_auc"] == pytest.approx(study.default_value)
    assert parent.data.metrics["best_val_pr_auc"] == pytest.approx(study.best_value)
    assert study.best_value >= study.default_value
    assert float(parent.data.params["lr"]) == pytest.approx(study.best_params["lr"])
    assert tuning.parse_hidden(parent.data.params["hidden"]) == study.best_params["hidden"]

    logged = {Path(a.path).name for a in client.list_artifacts(study.parent_run_id, "tuning")}
    assert {"tuning.md", "param_importances.png", "parallel_coordinate.png", "search_space.json"} <= logged
    report = study.artifacts[0].read_text()
    assert "tuning beat the defaults: " in report and "| 0 | complete |" in report
    assert all(p.stat().st_size > 5000 for p in study.artifacts[1:])  # real images


def test_the_train_step_trains_with_the_best_params(study, training_set, settings, tmp_path):
    params = steps.TrainStepParams(epochs=2, patience=2, params_from="best")
    trained = steps.train(str(training_set), str(tmp_path / "model"), params, settings)
    run = MlflowClient(settings.tracking_uri()).get_run(trained["run_id"])
    assert float(run.data.params["lr"]) == pytest.approx(study.best_params["lr"])
    assert run.data.params["batch_size"] == str(study.best_params["batch_size"])
    assert run.data.params["hidden"] == str(study.best_params["hidden"])
    assert run.data.tags["params_from"] == f"tuning run {study.parent_run_id}"


def test_params_from_best_without_a_study_stops_the_step(training_set, settings, tmp_path):
    with pytest.raises(steps.StepFailed, match=r"no finished tuning study.*run `make tune` first"):
        steps.train(
            str(training_set), str(tmp_path / "m"), steps.TrainStepParams(params_from="best"), settings
        )
    with pytest.raises(steps.StepFailed, match='params_from must be "" or "best"'):
        steps.train(
            str(training_set), str(tmp_path / "m"), steps.TrainStepParams(params_from="last"), settings
        )


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": (0.1, 0.01)}, "search space lr: needs 0 < low < high"),
        ({"weight_decay": (0.0, 1e-3)}, "search space weight_decay: needs 0 < low < high"),
        ({"dropout": (0.2, 1.0)}, "search space dropout"),
        ({"batch_size": ()}, "search space batch_size: no choices"),
        ({"hidden": ("64,0",)}, "hidden layers must be positive widths"),
    ],
)
def test_an_invalid_search_space_is_refused_before_anything_runs(space, message, training_set, settings):
    with pytest.raises(ValidationError, match=message):
        tuning.SearchSpace(**space)
    # The command line refuses it too, naming the setting, and creates no MLflow run.
    flag = f"--space={tuning.SearchSpace.model_construct(**space).model_dump_json()}"
    done = subprocess.run(
        [sys.executable, "-m", "relearn.model.tuning", "--training-set", str(training_set), flag],
        capture_output=True,
        text=True,
        env={"RELEARN_HOME": str(settings.home), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode != 0 and message.split(":")[0] in done.stderr, done.stderr[-2000:]
    assert not (settings.home / "mlflow.db").exists()


def test_cli_help():
    done = subprocess.run(
        [sys.executable, "-m", "relearn.model.tuning", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--trials" in done.stdout and "--space.lr" in done.stdout


# Katib's StdOut collector's default filter (katib pkg/metricscollector/v1beta1/common: DefaultFilter).
KATIB_STDOUT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
KUBERNETES_VALIDATE = Path(__file__).resolve().parents[2] / ".venv" / "chart" / "bin" / "kubernetes-validate"


def test_the_katib_experiment_validates_and_its_trials_run_the_train_code(training_set, tmp_path):
    from kubeflow_katib_api.models import V1beta1Experiment

    doc = katib.experiment(
        SPACE, name="relearn-tune", namespace="team", image="img:1", training_set=str(training_set), epochs=3
    )
    # The SDK's models ignore unknown fields but type the known ones: the round trip must lose nothing.
    assert V1beta1Experiment.from_dict(doc).to_dict() == doc
    typo = json.loads(json.dumps(doc))
    typo["spec"]["parallelTrialCout"] = typo["spec"].pop("parallelTrialCount")
    assert V1beta1Experiment.from_dict(typo).to_dict() != typo
    # The webhook's rules (katib pkg/webhook/v1beta1/experiment/validator): trial parameters reference
    # search-space parameters, every ${trialParameters.x} in the template is declared, the primary container
    # exists; the search space is the local study's.
    spec = doc["spec"]
    template = spec["trialTemplate"]
    declared = {p["name"] for p in template["trialParameters"]}
    assert {p["reference"] for p in template["trialParameters"]} == {p["name"] for p in spec["parameters"]}
    assert set(re.findall(r"\$\{trialParameters\.(\w+)\}", json.dumps(template["trialSpec"]))) == declared
    job_spec = template["trialSpec"]["spec"]["template"]["spec"]
    (container,) = job_spec["containers"]
    assert container["name"] == template["primaryContainerName"]
    lr = next(p for p in spec["parameters"] if p["name"] == "lr")["feasibleSpace"]
    assert (float(lr["min"]), float(lr["max"]), lr["distribution"]) == (*SPACE.lr, "logUniform")
    if KUBERNETES_VALIDATE.exists():  # the trial Job against Kubernetes' own schema (make setup installs it)
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps({**template["trialSpec"], "metadata": {"name": "trial"}}))
        out = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", "1.30.0", str(job)])
        assert out.returncode == 0

    # The trial's command as Katib substitutes it, run here: the curve Katib's collector would parse is
    # the one the same train() gives in this process.
    values = {
        "learningRate": "0.004",
        "weightDecay": "1e-05",
        "dropout": "0.1",
        "batchSize": "1024",
        "hidden": "16",
    }
    command = [
        re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: values[m[1]], a) for a in container["command"]
    ]
    assert command[:3] == ["python", "-m", "relearn.model.katib"]
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    collected = [
        dict((m[0], float(m[1])) for m in re.findall(KATIB_STDOUT_FILTER, line))
        for line in done.stdout.splitlines()
    ]
    curve = [(int(c["epoch"]), c["val_pr_auc"]) for c in collected if "val_pr_auc" in c]
    train_df, val_df, _ = time_split(pd.read_parquet(training_set), 0.15, 0.2)
    params = BASE.model_copy(
        update={"epochs": 3, "seed": 7, "lr": 0.004, "batch_size": 1024, "hidden": (16,)}
    )
    here = train(train_df, val_df, params)
    assert curve == [(int(e["epoch"]), pytest.approx(e["val_pr_auc"], abs=1e-6)) for e in here.history]


def test_katib_render_prints_the_experiment_and_refuses_bad_options(capsys):
    """The command base: ``render`` prints experiment()'s object; a bad option exits 2 naming it."""
    import yaml

    katib.main(["render", "--image", "img:1", "--training-set", "s3://b/t", "--trials", "4", "--parallel=2"])
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = katib.experiment(
        tuning.SearchSpace(), name="relearn-tune", namespace="kubeflow-user-example-com", image="img:1",
        training_set="s3://b/t", trials=4, parallel=2,
    )  # fmt: skip
    assert printed == expected
    with pytest.raises(SystemExit) as refused:
        katib.main(["trial", "--training-set", "t.parquet", "--dropout", "1.5"])
    assert refused.value.code == 2 and "trial.dropout" in capsys.readouterr().err


def test_make_tune_reads_the_newest_pipeline_runs_training_set(tmp_path):
    with pytest.raises(SystemExit, match="run `make train` or pass --training-set"):
        tuning.newest_training_set(tmp_path)
    for i, name in enumerate(("relearn-train-b", "relearn-train-a")):  # by time, not by name
        found = tmp_path / "pipeline_runs" / name / "features" / "training_set"
        found.parent.mkdir(parents=True)
        found.write_bytes(b"")
        os.utime(found, (1_000_000 + i, 1_000_000 + i))
    assert tuning.newest_training_set(tmp_path) == found
