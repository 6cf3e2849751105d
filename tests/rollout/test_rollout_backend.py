"""The Kubernetes backend, without a cluster: a real HTTP server on loopback plays the API server.

The official ``kubernetes`` client talks to it over HTTP; the server records every request (method, path,
content type, body), applies merge patches as the API server does (RFC 7386), and validates each patched
object against the upstream CRD schemas in ../shared/crds closed against unknown fields.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from relearn.errors import RelearnError, outcome_of
from relearn.rollout.backend import RolloutBackend, RolloutError, RolloutState
from relearn.rollout.kubernetes_backend import (
    ANN_CANARY,
    ANN_SHADOW,
    ANN_STABLE,
    ANN_STABLE_URI,
    KubernetesBackend,
)
from support.crds import CRDS, crd_errors
from support.kube_api import MERGE, FakeApiServer

NS = "fraud"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
VS = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"

pytestmark = pytest.mark.skipif(not CRDS.is_dir(), reason=f"no CRDs in {CRDS}")


def _container(uri: str) -> dict[str, Any]:
    return {
        "name": "kserve-container",
        "image": "relearn-predictor:0.1.0",
        "command": ["python", "-m", "relearn.serving.predictor"],
        "env": [
            {"name": "RELEARN_PREDICTOR_MODEL_URI", "value": uri},
            {"name": "RELEARN_PREDICTOR_HOST", "value": "0.0.0.0"},
        ],
        "ports": [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}],
    }


def isvc(name: str, uri: str) -> dict[str, Any]:
    """An InferenceService shaped like the chart's (predictor + transformer, env-carried model URI)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "predictor": {"minReplicas": 1, "containers": [_container(uri)]},
            "transformer": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "relearn-transformer:0.1.0",
                        "command": ["python", "-m", "relearn.serving.transformer"],
                    }
                ],
            },
        },
    }


def virtual_service() -> dict[str, Any]:
    """The chart's shadow-mirror VirtualService with the mirror off."""
    host = f"relearn-fraud.{NS}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "relearn-shadow-mirror", "namespace": NS},
        "spec": {
            "hosts": ["relearn-fraud.example.com"],
            "gateways": ["knative-serving/knative-ingress-gateway"],
            "http": [
                {
                    "name": "fraud-with-shadow",
                    "route": [
                        {
                            "destination": {"host": host, "port": {"number": 80}},
                            "headers": {"request": {"set": {"Host": host}}},
                        }
                    ],
                }
            ],
        },
    }


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(
        {
            f"{ISVC}/relearn-fraud": isvc("relearn-fraud", "models:/relearn-fraud/1"),
            f"{ISVC}/relearn-fraud-shadow": isvc("relearn-fraud-shadow", "models:/relearn-fraud@challenger"),
            f"{VS}/relearn-shadow-mirror": virtual_service(),
        }
    )
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)


@pytest.fixture
def backend(api: FakeApiServer) -> KubernetesBackend:
    from kubernetes import client

    configuration = client.Configuration(host=api.url)
    return KubernetesBackend(
        NS,
        "relearn-fraud",
        virtual_service="relearn-shadow-mirror",
        shadow_service="relearn-fraud-shadow",
        api_client=client.ApiClient(configuration),
    )


def _uri(obj: dict[str, Any]) -> str:
    env = obj["spec"]["predictor"]["containers"][0]["env"]
    return next(v["value"] for v in env if v["name"] == "RELEARN_PREDICTOR_MODEL_URI")


def test_fixture_objects_are_valid_and_typos_are_rejected(api: FakeApiServer) -> None:
    for obj in api.objects.values():
        assert crd_errors(obj) == []
    typo = copy.deepcopy(api.objects[f"{ISVC}/relearn-fraud"])
    typo["spec"]["predictor"]["canaryTraficPercent"] = 10
    assert crd_errors(typo), "the closed schema must reject unknown fields"


def test_backend_satisfies_protocol(backend: KubernetesBackend) -> None:
    assert isinstance(backend, RolloutBackend)
    assert backend.state() == RolloutState(stable="1", canary=None, canary_percent=0, shadow=None)


def test_canary_start_sends_the_documented_merge_patch(
    api: FakeApiServer, backend: KubernetesBackend
) -> None:
    state = backend.start_canary("2", 10)
    assert state == RolloutState(stable="1", canary="2", canary_percent=10)
    [patch] = api.patches()
    assert patch["path"] == f"{ISVC}/relearn-fraud"
    assert patch["content_type"] == MERGE
    body = patch["body"]
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert body["spec"]["transformer"] == {"canaryTrafficPercent": 10}
    # The whole containers list (a merge patch replaces lists) with only the model URI changed.
    expected = _container("models:/relearn-fraud/2")
    assert body["spec"]["predictor"]["containers"] == [expected]
    assert body["metadata"]["annotations"] == {
        ANN_CANARY: "2",
        ANN_STABLE: "1",
        ANN_STABLE_URI: "models:/relearn-fraud/1",
    }
    assert api.rejected == []
    with pytest.raises(RolloutError):
        backend.start_canary("3", 10)


def test_a_refused_action_is_a_conflict_in_the_error_model(backend: KubernetesBackend) -> None:
    """Callers catching RuntimeError still catch it; servers answer it 409 / FAILED_PRECONDITION."""
    with pytest.raises(RolloutError) as refused:
        backend.promote()
    error = refused.value
    assert isinstance(error, RelearnError) and isinstance(error, RuntimeError)
    assert (error.status, error.grpc_code, outcome_of(error), error.body()) == (
        409,
        "FAILED_PRECONDITION",
        "invalid",
        {"error": "no canary to promote"},
    )


def test_step_promote_sends_null_to_remove_the_field(api: FakeApiServer, backend: KubernetesBackend) -> None:
    backend.start_canary("2", 10)
    backend.set_canary_percent(25)
    step = api.patches()[-1]
    assert step["body"] == {
        "spec": {"predictor": {"canaryTrafficPercent": 25}, "transformer": {"canaryTrafficPercent": 25}}
    }
    state = backend.promote()
    promote = api.patches()[-1]
    assert promote["content_type"] == MERGE
    assert promote["body"]["spec"] == {
        "predictor": {"canaryTrafficPercent": None},
        "transformer": {"canaryTrafficPercent": None},
    }
    assert promote["body"]["metadata"]["annotations"] == {
        ANN_STABLE: "2",
        ANN_STABLE_URI: "models:/relearn-fraud/2",
        ANN_CANARY: None,
    }
    stored = api.objects[f"{ISVC}/relearn-fraud"]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert "canaryTrafficPercent" not in stored["spec"]["transformer"]
    assert _uri(stored) == "models:/relearn-fraud/2"
    assert state == RolloutState(stable="2")
    assert api.rejected == []


def test_rollback_sets_zero(api: FakeApiServer, backend: KubernetesBackend) -> None:
    backend.start_canary("2", 50)
    state = backend.rollback()
    rollback = api.patches()[-1]
    assert rollback["body"] == {
        "spec": {"predictor": {"canaryTrafficPercent": 0}, "transformer": {"canaryTrafficPercent": 0}},
        "metadata": {"annotations": {ANN_CANARY: None}},
    }
    assert api.objects[f"{ISVC}/relearn-fraud"]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert state == RolloutState(stable="1")
    with pytest.raises(RolloutError):
        backend.promote()
    assert api.rejected == []


def test_shadow_patches_the_virtual_service_mirror(api: FakeApiServer, backend: KubernetesBackend) -> None:
    state = backend.start_shadow("3", 20)
    assert state.shadow == "3" and state.mirror_percent == 20.0
    isvc_patch, vs_patch = api.patches()
    assert isvc_patch["path"] == f"{ISVC}/relearn-fraud-shadow"
    assert isvc_patch["body"] == {
        "spec": {"predictor": {"containers": [_container("models:/relearn-fraud/3")]}}
    }
    assert vs_patch["path"] == f"{VS}/relearn-shadow-mirror"
    assert vs_patch["content_type"] == MERGE
    [route] = vs_patch["body"]["spec"]["http"]
    assert route["mirror"] == {
        "host": f"relearn-fraud-shadow-transformer.{NS}.svc.cluster.local",
        "port": {"number": 80},
    }
    assert route["mirrorPercentage"] == {"value": 20.0}
    assert route["route"] == virtual_service()["spec"]["http"][0]["route"], "the primary route is kept"
    assert vs_patch["body"]["metadata"] == {"annotations": {ANN_SHADOW: "3"}}
    state = backend.stop_shadow()
    assert state.shadow is None and state.mirror_percent == 0
    stored = api.objects[f"{VS}/relearn-shadow-mirror"]["spec"]["http"][0]
    assert "mirror" not in stored and "mirrorPercentage" not in stored
    assert api.rejected == []


def test_invalid_percent_is_refused_before_any_request(
    api: FakeApiServer, backend: KubernetesBackend
) -> None:
    with pytest.raises(ValueError):
        backend.start_canary("2", 101)
    assert api.requests == []


def test_pin_stable_replaces_the_alias_by_its_version(api: FakeApiServer, backend: KubernetesBackend) -> None:
    """A stable revision loading ``@champion`` is pinned with one merge patch: URI and stable annotations."""
    path = f"{ISVC}/relearn-fraud"
    api.objects[path] = isvc("relearn-fraud", "models:/relearn-fraud@champion")
    assert backend.stable_alias() == "champion"

    state = backend.pin_stable("3")

    [patch] = api.patches()
    assert patch["path"] == path and patch["content_type"] == MERGE
    assert patch["body"] == {
        "spec": {"predictor": {"containers": [_container("models:/relearn-fraud/3")]}},
        "metadata": {"annotations": {ANN_STABLE: "3", ANN_STABLE_URI: "models:/relearn-fraud/3"}},
    }
    assert state == RolloutState(stable="3")
    assert _uri(api.objects[path]) == "models:/relearn-fraud/3"
    assert backend.stable_alias() is None, "pinned: nothing left to pin"
    # a canary started later records the pinned URI as the one to return to
    backend.start_canary("4", 10)
    assert api.objects[path]["metadata"]["annotations"][ANN_STABLE_URI] == "models:/relearn-fraud/3"
    assert backend.stable_alias() is None, "never pin while a canary runs"
    with pytest.raises(RolloutError):
        backend.pin_stable("3")
    assert api.rejected == []


def test_pin_stable_after_a_rollback_pins_the_revision_that_serves(
    api: FakeApiServer, backend: KubernetesBackend
) -> None:
    """After a rollback the previous revision (``@champion``) serves while the spec names the canary's URI."""
    path = f"{ISVC}/relearn-fraud"
    api.objects[path] = isvc("relearn-fraud", "models:/relearn-fraud@champion")
    backend.start_canary("2", 10)
    backend.rollback()
    assert backend.stable_alias() == "champion"

    backend.pin_stable("1")

    body = api.patches()[-1]["body"]
    assert body["spec"] == {  # the pinned revision is the latest: it must take 100 %, not the 0 % left over
        "predictor": {"canaryTrafficPercent": None, "containers": [_container("models:/relearn-fraud/1")]},
        "transformer": {"canaryTrafficPercent": None},
    }
    stored = api.objects[path]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert "canaryTrafficPercent" not in stored["spec"]["transformer"]
    assert backend.state() == RolloutState(stable="1")
    assert api.rejected == []


def test_only_the_own_models_alias_is_pinned(api: FakeApiServer, backend: KubernetesBackend) -> None:
    assert backend.stable_alias() is None, "the fixture pins version 1 already"
    api.objects[f"{ISVC}/relearn-fraud"] = isvc("relearn-fraud", "models:/another-model@champion")
    assert backend.stable_alias() is None
    assert api.patches() == []


def test_the_explainer_follows_the_predictor_through_canary_promotion_and_pin(
    api: FakeApiServer, backend: KubernetesBackend
) -> None:
    """With the chart's explainer (its own copy of the model), every model change reaches it too."""
    path = f"{ISVC}/relearn-fraud"
    explainer = _container("models:/relearn-fraud/1")
    explainer["command"] = ["python", "-m", "relearn.serving.explainer"]
    explainer["env"] = [{"name": "RELEARN_EXPLAINER_MODEL_URI", "value": "models:/relearn-fraud/1"}]
    api.objects[path]["spec"]["explainer"] = {"minReplicas": 1, "containers": [explainer]}

    def explainer_uri() -> str:
        env = api.objects[path]["spec"]["explainer"]["containers"][0]["env"]
        return next(v["value"] for v in env if v["name"] == "RELEARN_EXPLAINER_MODEL_URI")

    backend.start_canary("2", 10)
    body = api.patches()[-1]["body"]
    assert body["spec"]["explainer"]["canaryTrafficPercent"] == 10  # split like the predictor
    assert explainer_uri() == _uri(api.objects[path]) == "models:/relearn-fraud/2"
    backend.set_canary_percent(50)
    assert api.patches()[-1]["body"]["spec"]["explainer"] == {"canaryTrafficPercent": 50}
    backend.promote()
    assert api.patches()[-1]["body"]["spec"]["explainer"] == {"canaryTrafficPercent": None}
    backend.pin_stable("3")
    assert explainer_uri() == _uri(api.objects[path]) == "models:/relearn-fraud/3"
    assert "canaryTrafficPercent" not in api.objects[path]["spec"]["explainer"]
    assert api.rejected == []  # every patched object still valid against the CRD
