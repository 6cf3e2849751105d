"""The compiled training pipeline is YAML that Kubeflow Pipelines accepts, wired to the release it serves."""

from __future__ import annotations

import base64
import copy
import itertools
import re
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components import PIPELINE_IMAGE
from pipelines.compile import compile_all
from pipelines.train import (
    PIPELINE_ENV_CONFIG_MAP,
    PIPELINE_ENV_KEYS,
    REDIS_AUTH_KEY,
    REDIS_AUTH_SECRET,
    REDIS_PASSWORD_ENV,
    STATE_PASSWORD_ENV,
)
from rehearsal.kfp_pod import MissingReference, kfp_pod_env
from support.chart import NAMESPACE, needs_helm, rendered
from support.crds import CRDS

STEPS = ["ingest", "validate", "features", "train", "evaluate", "register", "gate", "deploy"]
RUN_NAMESPACE = "kubeflow"  # kubeflow.runNamespace's default


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict[str, Any]]:
    """The documents of the compiled package: the pipeline spec, then the platform spec."""
    (path,) = (p for p in compile_all(tmp_path_factory.mktemp("compiled")) if p.stem == "relearn-train")
    return list(yaml.safe_load_all(path.read_text()))


def test_compiled_yaml_parses_into_pipeline_spec(compiled):
    pipeline, platform = compiled
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())  # raises on unknown fields
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    assert spec.pipeline_info.name == "relearn-train"
    assert sorted(spec.root.dag.tasks) == sorted(STEPS)
    # The steps run in order: each one depends on the one before it.
    deps = {name: set(task.dependent_tasks) for name, task in spec.root.dag.tasks.items()}
    for before, after in itertools.pairwise(STEPS):
        assert before in deps[after], (before, after)
    params = spec.root.input_definitions.parameters
    assert {"start", "days", "seed", "epochs", "alert_budget"} <= set(params)
    assert params["days"].default_value.number_value > 0


def test_every_step_runs_our_image_without_pip_installs(compiled):
    executors = compiled[0]["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == PIPELINE_IMAGE
        # The image carries kfp and relearn: nothing is installed when a pod starts.
        assert "pip install" not in " ".join(container["command"])
        assert "from relearn import steps" in " ".join(container["command"])


def test_every_step_gets_the_run_namespaces_config_map_as_env(compiled):
    pipeline, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(pipeline["deploymentSpec"]["executors"])  # every step, none forgotten
    for label, config in executors.items():
        (entry,) = config["configMapAsEnv"]
        assert entry["configMapName"] == PIPELINE_ENV_CONFIG_MAP, label
        assert entry["configMapNameParameter"] == {"runtimeValue": {"constant": PIPELINE_ENV_CONFIG_MAP}}
        assert not entry.get("optional"), label  # a run without the chart's ConfigMap must not start
        pairs = [(p["configMapKey"], p["envVar"]) for p in entry["keyToEnv"]]
        assert pairs == [(k, k) for k in PIPELINE_ENV_KEYS], label
        # feast.redis.auth: the password from the run namespace's Secret, optional (no auth, no Secret), for
        # Feast's Redis and the streaming state's.
        secrets = config["secretAsEnv"]
        for secret in secrets:
            assert secret["secretNameParameter"] == {"runtimeValue": {"constant": REDIS_AUTH_SECRET}}, label
            assert secret["optional"] is True, label
        pairs = [(p["secretKey"], p["envVar"]) for s in secrets for p in s["keyToEnv"]]
        assert pairs == [(REDIS_AUTH_KEY, REDIS_PASSWORD_ENV), (REDIS_AUTH_KEY, STATE_PASSWORD_ENV)], label


def _pipeline_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (config_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == PIPELINE_ENV_CONFIG_MAP
    ]
    return config_map


@needs_helm
@pytest.mark.parametrize("shadow", ["false", "true"])
def test_the_mapped_keys_are_the_rendered_config_maps_keys(shadow):
    config_map = _pipeline_env(rendered("kubeflow", "--set", f"shadow.enabled={shadow}"))
    assert config_map["metadata"]["namespace"] == RUN_NAMESPACE
    assert set(config_map["data"]) == set(PIPELINE_ENV_KEYS)
    # Every value a string, as env vars are (an int or bool here would fail the API server's validation).
    assert all(isinstance(v, str) for v in config_map["data"].values())
    # Without kubeflow.enabled nothing lands in a namespace that may not exist.
    assert not [d for d in rendered("default") if d["metadata"].get("namespace") != NAMESPACE]


@needs_helm
def test_a_kfp_pod_gets_the_releases_services(compiled):
    docs = rendered("kubeflow")
    fqdn = f"{NAMESPACE}.svc.cluster.local"
    for step in STEPS:
        env = kfp_pod_env(compiled, docs, step)
        assert env == _pipeline_env(docs)["data"], step
    env = kfp_pod_env(compiled, docs, "features")
    assert env["RELEARN_MLFLOW_TRACKING_URI"] == f"http://relearn-mlflow.{fqdn}:5000"
    assert env["RELEARN_FEAST_REGISTRY"] == f"grpc://relearn-feast-registry.{fqdn}:6570"
    assert env["RELEARN_FEAST_REDIS_CONNECTION"] == f"relearn-redis.{fqdn}:6379"
    assert env["RELEARN_FEAST_ONLINE_STORE"] == "redis"
    assert env["RELEARN_FEAST_OFFLINE_DIR"].startswith("/tmp/")  # pod-local: one pod writes and reads them
    # The features step bootstraps the transformers' streaming state: the same Redis, the same settings.
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    transformer = {e["name"]: e.get("value") for e in isvc["spec"]["transformer"]["containers"][0]["env"]}
    state = {k: v for k, v in env.items() if k.startswith("RELEARN_STATE_")}
    assert state == {k: v for k, v in transformer.items() if k.startswith("RELEARN_STATE_")}
    assert state["RELEARN_STATE_REDIS_URLS"] == f"redis://relearn-state-redis.{fqdn}:6379/0"
    deploy = kfp_pod_env(compiled, docs, "deploy")
    assert deploy["RELEARN_ROLLOUT_BACKEND"] == "kubernetes"
    assert deploy["RELEARN_ROLLOUT_NAMESPACE"] == NAMESPACE  # not `default`
    assert deploy["RELEARN_ROLLOUT_INFERENCE_SERVICE"] == "relearn-fraud"


@needs_helm
def test_kfp_pod_env_refuses_what_the_kubelet_would_refuse(compiled):
    docs = rendered("kubeflow")
    with pytest.raises(MissingReference, match=f"ConfigMap {RUN_NAMESPACE}/{PIPELINE_ENV_CONFIG_MAP}"):
        kfp_pod_env(compiled, rendered("default"), "train")  # kubeflow.enabled=false: no ConfigMap
    with pytest.raises(MissingReference):
        kfp_pod_env(compiled, docs, "train", namespace="team-a")  # another run namespace
    trimmed = copy.deepcopy(docs)
    del _pipeline_env(trimmed)["data"]["RELEARN_FEAST_REGISTRY"]
    with pytest.raises(MissingReference, match="key RELEARN_FEAST_REGISTRY"):
        kfp_pod_env(compiled, trimmed, "features")
    with pytest.raises(KeyError, match="no task 'trainer'"):
        kfp_pod_env(compiled, docs, "trainer")


def test_kfp_pod_env_resolves_secrets_optional_entries_and_the_platform_spec_alone():
    platform = {
        "platforms": {
            "kubernetes": {
                "deploymentSpec": {
                    "executors": {
                        "exec-train": {
                            "secretAsEnv": [
                                {
                                    "secretNameParameter": {"runtimeValue": {"constant": "s3"}},
                                    "keyToEnv": [{"secretKey": "key", "envVar": "AWS_ACCESS_KEY_ID"}],
                                },
                                {
                                    "secretName": "absent",
                                    "keyToEnv": [{"secretKey": "x", "envVar": "X"}],
                                    "optional": True,
                                },
                            ],
                            "configMapAsEnv": [
                                {
                                    "configMapName": "cm",
                                    "keyToEnv": [{"configMapKey": "a", "envVar": "AWS_ACCESS_KEY_ID"}],
                                }
                            ],
                            "fieldPathAsEnv": [{"name": "NS", "fieldPath": "metadata.namespace"}],
                        }
                    }
                }
            }
        }
    }
    secret = {"key": base64.b64encode(b"k").decode()}
    docs = [
        {"kind": "Secret", "metadata": {"name": "s3", "namespace": "ns"}, "data": secret},
        {"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns"}, "data": {"a": "from-cm"}},
    ]
    # Secrets first, then ConfigMaps (the driver's order): the later entry of the same name wins.
    env = kfp_pod_env(platform, docs, "train", namespace="ns")
    assert env == {"AWS_ACCESS_KEY_ID": "from-cm", "NS": "ns"}
    del platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]["configMapAsEnv"]
    assert kfp_pod_env(platform, docs, "train", namespace="ns")["AWS_ACCESS_KEY_ID"] == "k"


# ------------------------------------------------------------------------------- the deploy step's RBAC
API_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/[^/]+/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)/(?P<name>[^/?]+)"
)
VERBS = {"GET": "get", "PATCH": "patch"}


def _allowed(role: dict[str, Any], group: str, plural: str, name: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"]
        and plural in rule["resources"]
        and verb in rule["verbs"]
        and name in rule.get("resourceNames", [name])
        for rule in role["rules"]
    )


@needs_helm
@pytest.mark.skipif(not CRDS.is_dir(), reason=f"{CRDS} missing (upstream CRDs)")
@pytest.mark.parametrize("mode", ["canary", "shadow"])
def test_the_deploy_step_with_its_pod_env_stays_within_its_role(compiled, mode, tmp_path, monkeypatch):
    """The deploy component, with the env its KFP pod gets, against a stand-in API server holding the rendered
    InferenceServices and VirtualService: every call it makes is allowed by the rendered Role, whose binding
    names the run pods' service account; and the Role allows nothing else (each rule is used)."""
    from components.deploy.component import deploy as deploy_component
    from rehearsal.apiserver import custom_objects
    from support.kube_api import FakeApiServer

    docs = rendered("kubeflow", "--set", f"shadow.enabled={str(mode == 'shadow').lower()}")
    for key, value in kfp_pod_env(compiled, docs, "deploy").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path))  # the pod's /tmp/relearn: the audit trail goes there

    with FakeApiServer(custom_objects(docs)) as api:
        # The client finds the stand-in through a kubeconfig, as outside a pod (relearn.kube.api_client).
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        outputs = deploy_component.python_func(
            model_version="7",
            gate_passed=True,
            rollout_mode=mode,
            percent=0.0,
            decision=SimpleNamespace(path=str(tmp_path / "decision.md")),
        )
    assert outputs.action == mode, outputs
    assert api.patches() and not api.rejected

    name = "relearn-pipeline-deploy"
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == name]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == name]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    runner = {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": RUN_NAMESPACE}
    assert binding["subjects"] == [runner]
    used = set()
    for request in api.requests:
        match = API_PATH.match(request["path"])
        assert match and match["ns"] == NAMESPACE, request["path"]
        verb = VERBS[request["method"]]
        assert _allowed(role, match["group"], match["plural"], match["name"], verb), (verb, request["path"])
        used.add((match["group"], match["plural"], match["name"], verb))
    granted = {
        (g, r, n, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for n in rule["resourceNames"]
        for v in rule["verbs"]
    }
    # Least privilege: canary start needs the fraud InferenceService only; shadow start the shadow's and the
    # VirtualService, and reads the fraud one (state). The fraud one is patched by canary start only.
    unused = granted - used
    assert unused <= {("serving.kserve.io", "inferenceservices", "relearn-fraud", "patch")}, unused
