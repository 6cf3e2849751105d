"""The training pipeline end to end under kfp.local: real generator, Feast, PyTorch and MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.run import LocalRunError, run_locally
from relearn.features.spec import MODEL_INPUTS

pytestmark = pytest.mark.slow

# Small enough for CI (~60k transactions), large enough for a few hundred labelled frauds.
SMALL = {
    "start": "2026-02-02",
    "days": 24,
    "users": 1000,
    "merchants": 200,
    "seed": 3,
    "epochs": 8,
    "patience": 3,
    "label_maturity_days": 7,
    "git_sha": "0123abc",
}


def test_pipeline_registers_a_champion_that_loads_and_predicts(settings, tmp_path):
    summary = run_locally(SMALL, tmp_path / "runs", settings.home)

    mlflow.set_tracking_uri(settings.tracking_uri())
    client = MlflowClient()
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    challenger = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert str(champion.version) == str(challenger.version) == summary["model_version"] == "1"
    # Lineage: data window, feature service, code version and pipeline run are on the version.
    assert champion.tags["data_window"] == "2026-02-02+24d"
    assert champion.tags["feature_service"] == "fraud_model_v1"
    assert champion.tags["git_sha"] == "0123abc"
    assert champion.tags["pipeline_run_id"] not in ("", "unknown", "{{$.pipeline_job_uuid}}")

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    training_set = pd.read_parquet(summary["run_dir"] + "/features/training_set")
    predictions = model.predict(training_set[list(MODEL_INPUTS)].head(500))
    assert list(predictions.columns) == ["score", "decision"]
    assert predictions["score"].between(0, 1).all()

    # The model learned something real, and the evaluation says how it stands against the baseline.
    headline = summary["headline"]
    positive_rate = training_set["label"].mean()
    assert headline["pr_auc"] > 5 * positive_rate, headline
    assert summary["versus_baseline"].startswith(("beats the baseline", "does not beat the baseline on"))
    assert "<img" in Path(summary["evaluation_report"]).read_text()
    assert summary["gate"].startswith(("PASSED", "FAILED"))

    # A second run trains a challenger; the champion stays until a rollout promotes it.
    second = run_locally({**SMALL, "seed": 4}, tmp_path / "runs", settings.home)
    assert client.get_model_version_by_alias(settings.model_name, "champion").version == 1
    assert client.get_model_version_by_alias(settings.model_name, "challenger").version == 2
    decision = Path(second["gate_decision"]).read_text()
    assert "champion: 1" in decision and "| recall_at_budget |" in decision, decision
    # The paired comparison with the champion (differences and bounds) is on the challenger's version.
    tags = client.get_model_version(settings.model_name, "2").tags
    assert tags["gate.passed"] in ("True", "False") and tags["gate.confidence"] == "0.975"
    assert float(tags["gate.recall_at_budget.lower"]) <= float(tags["gate.recall_at_budget.difference"])


def test_a_corrupted_batch_stops_the_run_with_a_report(settings, tmp_path):
    corrupted = {**SMALL, "scenario": "data_bug_units", "onset": "day 12"}
    with pytest.raises(LocalRunError) as failure:
        run_locally(corrupted, tmp_path / "runs", settings.home)
    message = str(failure.value)
    assert "failed validation" in message
    assert "amount_median:EUR" in message  # the report names the broken expectation
    assert "Traceback" not in message
    # Nothing was trained or registered.
    mlflow.set_tracking_uri(settings.tracking_uri())
    assert MlflowClient().search_registered_models() == []
