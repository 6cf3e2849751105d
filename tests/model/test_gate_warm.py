"""A fine-tuned champion is asked not to be worse; a model trained from scratch must show a gain.

The gate step (``relearn.evaluation.gate``) reads the candidate's ``train_mode`` tag from a real MLflow
registry (SQLite) and applies ``warm_min_improvement`` to a warm-started version only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from relearn.evaluation import gate as gate_step
from relearn.model.gate import GateParams
from relearn.model.warm import MODE_TAG
from relearn.settings import RelearnSettings

FLAT = list(np.linspace(-0.01, 0.03, 101))  # gain +0.01, 2.5 % lower bound about -0.009: not significant


def _evaluation(tmp_path) -> str:
    metrics = {"recall_at_budget": 0.5, "pr_auc": 0.4, "slices": {}}
    draws = {"recall_at_budget": FLAT, "pr_auc": FLAT, "fraud_amount_caught": FLAT}
    rows = {k: {"candidate": 0.5, "champion": 0.5, "difference": 0.01, "draws": d} for k, d in draws.items()}
    paired = {"n": 1000, "positives": 50, "budget": 0.02, "n_boot": 100, "seed": 0, "metrics": rows}
    path = tmp_path / "evaluation.json"
    evaluation = {"candidate": metrics, "champion": metrics, "baseline": metrics, "paired": paired}
    path.write_text(json.dumps(evaluation | {"champion_version": "1"}))
    return str(path)


def test_for_candidate_swaps_only_the_required_gain():
    params = GateParams(warm_min_improvement=-0.02)
    assert params.for_candidate(False) is params
    assert params.for_candidate(True).min_improvement == -0.02
    assert GateParams().for_candidate(True).min_improvement == 0.01  # no warm rule given


@pytest.mark.parametrize(("mode", "passed"), [("warm", True), ("scratch", False)])
def test_the_gate_step_applies_the_warm_rule_by_the_versions_train_mode(tmp_path, mode, passed):
    from mlflow import MlflowClient

    settings = RelearnSettings(home=tmp_path)
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    client.create_registered_model(settings.model_name)
    version = client.create_model_version(settings.model_name, source=str(tmp_path), tags={MODE_TAG: mode})

    ok, reason = gate_step(
        _evaluation(tmp_path), str(tmp_path / "decision.md"), model_version=str(version.version),
        min_improvement=0.01, max_slice_regression=0.15, warm_min_improvement=-0.02, settings=settings,
    )  # fmt: skip

    assert ok is passed, reason
    tags = client.get_model_version(settings.model_name, str(version.version)).tags
    assert float(tags["gate.min_improvement"]) == (-0.02 if mode == "warm" else 0.01)
    assert ("fine-tuned champion" in reason) is (mode == "warm")
    assert ("fine-tuned champion" in (tmp_path / "decision.md").read_text()) is (mode == "warm")
