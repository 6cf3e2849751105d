"""The explainer in the chart: KServe's ``explainer`` component of the fraud InferenceService.

Rendered with helm (offline) and checked against the upstream CRDs; the container's args as KServe completes
them parse with the explainer's CLI; the network policies let it read the streaming state and MLflow.
"""

from __future__ import annotations

import copy

import pytest

from rehearsal.netpol import Pod, allowed
from support.chart import (
    NAMESPACE,
    container_env,
    named,
    needs_helm,
    needs_jsonschema,
    needs_shared,
    rendered,
)
from support.crds import crd_errors
from support.kserve import INJECTED, parse


def _isvc(docs: list[dict], name: str = "relearn-fraud") -> dict:
    return named(docs, "InferenceService", name)


def _explainer_pod(docs: list[dict]) -> Pod:
    """The explainer's pod as KServe labels it: the component's labels, ``component: explainer``."""
    isvc = _isvc(docs)
    labels = {**isvc["metadata"].get("labels", {}), **isvc["spec"]["explainer"]["labels"]}
    return Pod(NAMESPACE, {**labels, "component": "explainer"})


def _pod(docs: list[dict], deployment: str) -> Pod:
    return Pod(NAMESPACE, named(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


@needs_helm
@pytest.mark.parametrize("scenario", ["default", "canary", "production"])
def test_the_fraud_service_has_an_explainer_with_the_predictors_model_and_the_transformers_state(scenario):
    spec = _isvc(rendered(scenario))["spec"]
    (container,) = spec["explainer"]["containers"]
    (predictor,) = spec["predictor"]["containers"]
    (transformer,) = spec["transformer"]["containers"]
    assert container["command"] == ["python", "-m", "relearn.serving.explainer"]
    assert container["image"] == predictor["image"]  # the predictor's image: torch and captum
    assert "--model_name=relearn-fraud" in container["args"]
    env, predictor_env = container_env(container), container_env(predictor)
    assert env["RELEARN_EXPLAINER_MODEL_URI"] == predictor_env["RELEARN_PREDICTOR_MODEL_URI"]
    state = {k: v for k, v in container_env(transformer).items() if k.startswith("RELEARN_STATE_")}
    assert state and {k: env[k] for k in state} == state
    assert container["securityContext"]["runAsNonRoot"] and container["resources"]["limits"]
    assert spec["explainer"]["labels"]["relearn.io/serving"] == "true"
    if scenario == "canary":  # every component of the new revision takes the canary share
        assert spec["explainer"]["canaryTrafficPercent"] == spec["predictor"]["canaryTrafficPercent"]


@needs_helm
def test_the_shadow_has_no_explainer_and_disabling_removes_it_and_its_policy():
    docs = rendered("shadow")
    assert "explainer" not in _isvc(docs, "relearn-fraud-shadow")["spec"]
    off = rendered("default", "--set", "fraud.explainer.enabled=false")
    assert "explainer" not in _isvc(off)["spec"]
    assert not [d for d in off if d["metadata"]["name"].endswith("-explainer")]


@needs_helm
def test_the_explainer_reaches_the_streaming_state_and_mlflow_but_not_feasts_redis():
    docs = rendered("default")
    explainer = _explainer_pod(docs)
    state, mlflow, feast = (_pod(docs, n) for n in ("relearn-state-redis", "relearn-mlflow", "relearn-redis"))
    assert allowed(docs, explainer, state, 6379)
    assert allowed(docs, explainer, mlflow, 5000)
    assert not allowed(docs, explainer, feast, 6379)
    off = rendered("default", "--set", "fraud.explainer.enabled=false")
    assert not allowed(off, explainer, state, 6379)


@needs_helm
@needs_shared
@needs_jsonschema
def test_the_explainer_spec_is_valid_against_kserves_crd_and_a_typo_in_it_is_not():
    isvc = _isvc(rendered("default"))
    assert not crd_errors(isvc), crd_errors(isvc)
    typo = copy.deepcopy(isvc)
    typo["spec"]["explainer"]["minReplica"] = typo["spec"]["explainer"].pop("minReplicas")
    assert crd_errors(typo)


@needs_helm
def test_the_explainer_cli_takes_its_args_as_kserve_completes_them():
    from relearn.serving.explainer import ExplainerSettings

    (container,) = _isvc(rendered("default"))["spec"]["explainer"]["containers"]
    # CustomExplainer.GetContainer: --model_name and --workers are in the args already, so it appends the
    # predictor host ("<isvc>-predictor.<ns>") and the HTTP port only.
    argv = [*container["args"], "--predictor_host", "relearn-fraud-predictor.relearn", "--http_port", "8080"]
    settings = parse(ExplainerSettings, argv)
    assert (settings.model_name, settings.http_port, settings.workers) == ("relearn-fraud", 8080, 1)
    assert parse(ExplainerSettings, INJECTED).predictor_host == "relearn-fraud-predictor.relearn"
