"""Explanations: sanity of the attributions and the permutation importance, and ``:explain`` over REST.

Sanity checks after Adebayo et al., "Sanity Checks for Saliency Maps" (2018): an input the network cannot
see gets no attribution and no importance; re-initializing the weights changes the attributions. The
served explainer is a real KServe server process on loopback, on a model artifact written here.
"""

from __future__ import annotations

import re

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from relearn.features.spec import CATEGORICAL_INPUTS, LABEL, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.model import explain
from relearn.model.net import FraudNet, Preprocessor, save_model, score
from support.serving_stack import Server

IGNORED = ("log_amount", "country")  # one numeric input, one categorical field


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.exponential(2.0, n).astype(np.float32) for name in NUMERIC_INPUTS})
    for name, vocab in CATEGORICAL_INPUTS.items():
        frame[name] = rng.choice(vocab, n)
    return frame


def _net(preprocessor: Preprocessor, seed: int) -> FraudNet:
    torch.manual_seed(seed)
    return FraudNet(preprocessor.mean, preprocessor.std, preprocessor.cardinalities).eval()


def _blind(net: FraudNet, names: tuple[str, ...]) -> FraudNet:
    """``net`` with the first layer's weights from ``names`` zeroed: it cannot see those inputs."""
    slices = explain._field_slices(net)
    with torch.no_grad():
        for name in names:
            net.mlp[0].weight[:, slices[MODEL_INPUTS.index(name)]] = 0.0
    return net


@pytest.fixture(scope="module")
def world():
    frame = _frame(3000)
    preprocessor = Preprocessor.fit(frame)
    net = _blind(_net(preprocessor, seed=1), IGNORED)
    # Labels the network ranks well (its own top scores, with noise), so its inputs are worth something.
    scores = score(net, preprocessor, frame) + np.random.default_rng(2).normal(0, 0.002, len(frame))
    frame[LABEL] = (scores >= np.quantile(scores, 0.95)).astype(np.int64)
    frame["amount"] = np.expm1(frame["log_amount"].to_numpy(np.float64))
    return frame, preprocessor, net


def _attributions(net: FraudNet, preprocessor: Preprocessor, frame: pd.DataFrame) -> dict:
    numeric, categorical = preprocessor.transform(frame[list(MODEL_INPUTS)])
    return explain.attributions(net, numeric, categorical)


def test_an_input_the_network_cannot_see_gets_no_attribution_and_the_rest_sum_to_the_logit(world):
    frame, preprocessor, net = world
    found = _attributions(net, preprocessor, frame.head(200))
    values = found["attributions"]
    for name in IGNORED:
        assert np.abs(values[:, MODEL_INPUTS.index(name)]).max() < 1e-6, name
    seen = [i for i, name in enumerate(MODEL_INPUTS) if name not in IGNORED]
    assert (np.abs(values[:, seen]).mean(axis=0) > 1e-4).all()
    # Completeness: the attributions account for the score's distance from the reference.
    gap = found["logit"] - found["base_logit"]
    assert np.allclose(values.sum(axis=1), gap, atol=5e-3 + 0.02 * np.abs(gap).max())
    probabilities = torch.tensor(score(net, preprocessor, frame.head(200)))
    assert np.allclose(found["logit"], torch.logit(probabilities), atol=1e-4)  # the served network's logit


def test_randomizing_the_weights_changes_the_attributions(world):
    frame, preprocessor, net = world
    rows = frame.head(200)
    before = _attributions(net, preprocessor, rows)["attributions"]
    randomized = _net(preprocessor, seed=7)  # same architecture, fresh weights
    after = _attributions(randomized, preprocessor, rows)["attributions"]
    corr = np.corrcoef(before.ravel(), after.ravel())[0, 1]
    assert corr < 0.5, corr
    # The inputs the trained weights ignore get attributions once the weights no longer ignore them.
    for name in IGNORED:
        assert np.abs(after[:, MODEL_INPUTS.index(name)]).mean() > 1e-3, name


def test_permutation_importance_of_an_ignored_input_is_zero_and_the_ranking_uses_the_business_metric(world):
    frame, preprocessor, net = world
    result = explain.permutation_importance(net, preprocessor, frame, alert_budget=0.05, repeats=3, seed=0)
    assert result["baseline"]["recall_at_budget"] > 0.6
    for name in IGNORED:
        for metric in explain.IMPORTANCE_METRICS:
            assert result["importance"][name][metric] == {"mean": 0.0, "std": 0.0}, name
    top = result["ranking"][0]
    assert result["importance"][top]["recall_at_budget"]["mean"] > 0.05
    assert top not in IGNORED
    assert result["term"]["log_amount"] == "amount" and result["n"] == len(frame)
    again = explain.permutation_importance(net, preprocessor, frame, alert_budget=0.05, repeats=3, seed=0)
    assert again == result  # seeded


def test_log_importance_writes_metrics_json_and_plot_to_the_mlflow_run(world, tmp_path):
    import mlflow

    frame, preprocessor, net = world
    result = explain.permutation_importance(net, preprocessor, frame.head(500), repeats=2)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Artifacts under tmp_path too (a sqlite store would put them in ./mlruns).
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("explain", str(tmp_path / "artifacts")))
    with mlflow.start_run() as run:
        explain.log_importance(result)
    client = mlflow.MlflowClient()
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["importance.log_amount.recall_at_budget"] == 0.0
    assert len([k for k in logged if k.startswith("importance.")]) == 2 * len(MODEL_INPUTS)
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "explain")}
    assert paths == {explain.IMPORTANCE_ARTIFACT, explain.IMPORTANCE_PLOT}


# Served: the explainer process ---------------------------------------------------------------------------

TRANSACTION = {
    "transaction_id": "t-1",
    "event_timestamp": "2026-03-02T10:00:00Z",
    "user_id": "u-1",
    "merchant_id": "m-1",
    "amount": 950.0,
    "currency": "EUR",
    "merchant_category": "electronics",
    "channel": "ecommerce",
    "country": "DE",
    "device_id": "d-1",
}


@pytest.fixture(scope="module")
def explainer(world, tmp_path_factory):
    _, preprocessor, net = world
    root = tmp_path_factory.mktemp("explainer")
    save_model(root / "model", net, preprocessor, {"threshold": 0.5})
    env = {"RELEARN_HOME": str(root / "home"), "RELEARN_STATE_PATH": str(root / "state.db")}
    server = Server("relearn.serving.explainer", ["--model-uri", str(root / "model")], env, root / "log")
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


def _explain(server: Server, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/relearn-fraud:explain", json=body, timeout=30)


def _counter(server: Server, outcome: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    labels = rf'component="explainer",[^}}]*outcome="{outcome}"[^}}]*'
    pattern = rf"relearn_serving_requests_total\{{{labels}\}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, text))


def test_explain_answers_raw_transactions_and_model_inputs_with_the_documented_schema(world, explainer):
    frame, preprocessor, net = world
    answer = _explain(explainer, {"instances": [TRANSACTION], "parameters": {"top": 4}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("model_version", "method", "target")} == {
        "model_version": "local", "method": "integrated_gradients", "target": "logit"}  # fmt: skip
    (row,) = body["explanations"]
    assert row["transaction_id"] == "t-1" and row["decision"] == (row["score"] >= body["threshold"])
    assert set(row) == {"transaction_id", "decision", "score", "logit", "base_score", "base_logit",
                        "convergence_delta", "attributions"}  # fmt: skip
    assert len(row["attributions"]) == 4
    assert set(row["attributions"][0]) == {"input", "term", "value", "attribution"}
    magnitudes = [abs(a["attribution"]) for a in row["attributions"]]
    assert magnitudes == sorted(magnitudes, reverse=True)

    # Model inputs (the predictor's v1 body): the same score as the network's, every input explained.
    rows = frame[list(MODEL_INPUTS)].head(3)
    instances = [{**r, "transaction_id": f"x{i}"} for i, r in enumerate(rows.to_dict("records"))]
    for r in instances:
        r.update({k: float(v) for k, v in r.items() if k in NUMERIC_INPUTS})
    answer = _explain(explainer, {"instances": instances})
    assert answer.status_code == 200, answer.text
    explained = answer.json()["explanations"]
    assert np.allclose([e["score"] for e in explained], score(net, preprocessor, rows), atol=1e-5)
    first = explained[0]
    by_input = {a["input"]: a for a in first["attributions"]}
    assert set(by_input) == set(MODEL_INPUTS)
    assert by_input["log_amount"]["attribution"] == 0.0  # the network cannot see it
    assert by_input["log_amount"]["value"] == pytest.approx(np.expm1(rows["log_amount"].iloc[0]), rel=1e-5)
    total = sum(a["attribution"] for a in first["attributions"])
    assert total == pytest.approx(first["logit"] - first["base_logit"], abs=0.02)
    assert _counter(explainer, "ok") >= 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": [{**TRANSACTION, "amount": "lots"}]}, "'amount'"),
        ({"instances": [{**TRANSACTION, "event_timestamp": None}]}, "event_timestamp"),
        ({"instances": [TRANSACTION], "parameters": {"top": 0}}, "parameters.top"),
        ({"instances": []}, "instances"),
        ({"rows": [TRANSACTION]}, "instances"),
        ({"instances": [{"log_amount": 1.0}]}, "instances[0]: missing field(s)"),
    ],
)
def test_a_malformed_explain_request_is_a_400_naming_the_field_and_the_server_keeps_serving(
    explainer, body, field
):
    ok_before = _counter(explainer, "ok")
    answer = _explain(explainer, body)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["error"]
    assert _counter(explainer, "ok") == ok_before
    assert _explain(explainer, {"instances": [TRANSACTION]}).status_code == 200
