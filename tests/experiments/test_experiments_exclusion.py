"""One test in production at a time over the fraud traffic: no canary starts while an experiment runs, no
experiment while a canary (or a shadow) runs — refused with a clear message and nothing changed, through
``kubectl relearn`` and the pipeline's deploy step, locally (the router's state file, the store file) and in
the cluster (the loopback API server holding the chart's objects: only reads on a refusal, under the
rendered Roles)."""

from __future__ import annotations

import json

import pytest
import yaml
from test_experiments_chart import ALL
from test_experiments_cluster import CM, ISVC, NS, _authorizer, calls, cluster, kubectl  # noqa: F401

from pipelines.compile import compile_all
from rehearsal.kfp_pod import kfp_pod_env
from relearn.experiments.store import ExperimentStore, default_store
from relearn.rollout.cli import run
from relearn.rollout.controller import ControllerSettings
from relearn.rollout.deploy import deploy
from relearn.rollout.local_backend import LocalBackend
from support.chart import objects, rendered
from support.kube_api import FakeApiServer

ARMS = ["--arm", "1=50", "--arm", "2=50", "--control", "1"]
MIRROR = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices/relearn-shadow-mirror"


def _local(tmp_path):
    """The local router with versions 1 (stable) and 2 and 3, and the plugin's local options."""
    state = tmp_path / "router-state.json"
    backend = LocalBackend(state)
    for version in ("1", "2", "3"):
        backend.register(version, rest=f"http://127.0.0.1:{version}")
    return state, backend, ["--backend", "local", "--state", str(state)]


def test_no_canary_while_an_experiment_runs_locally(settings, tmp_path, capsys) -> None:
    state, backend, local = _local(tmp_path)
    store = ExperimentStore(default_store())  # the store under RELEARN_HOME, as the transformer reads it
    store.start("ab", {"1": 50, "2": 50}, control="1")
    before = state.read_bytes()
    audit = settings.home / "rollout" / "audit.jsonl"

    assert run([*local, "canary", "start", "3", "--percent", "10"]) == 1
    err = capsys.readouterr().err
    assert (
        "refused: experiment 'ab' (ab) is running over traffic 'fraud'" in err and "experiment stop ab" in err
    )
    # The pipeline's deploy step skips the canary with the same reason.
    cfg = ControllerSettings(backend="local", state=state)
    done = deploy("3", gate_passed=True, rollout_mode="canary", settings=cfg)
    assert (done.action, done.reason.split(":")[0]) == (
        "skipped",
        "experiment 'ab' (ab) is running over traffic 'fraud'",
    )
    assert state.read_bytes() == before and not audit.exists(), "nothing changed, nothing recorded"

    # Nor a shadow: the controller turns a shadow that agrees into a canary.
    assert run([*local, "shadow", "start", "3", "--percent", "50"]) == 1
    assert "refused: experiment 'ab' (ab) is running" in capsys.readouterr().err
    assert deploy("3", gate_passed=True, rollout_mode="shadow", settings=cfg).action == "skipped"
    assert state.read_bytes() == before and not audit.exists(), "nothing changed, nothing recorded"
    # Once the experiment stops, the canary starts.
    store.stop("ab", "decided")
    assert run([*local, "canary", "start", "3", "--percent", "10"]) == 0
    assert backend.state().canary == "3"


def test_no_experiment_while_a_canary_or_a_shadow_runs_locally(settings, tmp_path, capsys) -> None:
    _, backend, local = _local(tmp_path)
    start = [*local, "experiment", "--no-registry", "start", "ab", *ARMS]
    backend.start_shadow("2", 50.0)
    assert run(start) == 2
    assert "refused: shadow 2 is mirroring the traffic and becomes a canary" in capsys.readouterr().err
    backend.stop_shadow()
    backend.start_canary("3", 10)
    assert run(start) == 2
    assert "refused: canary 3 is running at 10% of the traffic" in capsys.readouterr().err
    assert not default_store().exists(), "nothing written"
    backend.rollback()
    assert run(start) == 0


def kubectl_rollout(*argv: str) -> int:
    return run(["--backend", "kubernetes", "-n", NS, *argv])


@pytest.mark.parametrize("cluster", [("--set", "kubeflow.enabled=true")], indirect=True)
def test_no_canary_while_an_experiment_runs_in_the_cluster(
    cluster: FakeApiServer,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    docs = rendered("default", *ALL, "--set", "kubeflow.enabled=true")
    (deploy_role,) = [r for r in objects(docs, "Role") if r["metadata"]["name"] == "relearn-pipeline-deploy"]
    # The deploy step's environment: what the compiled pipeline maps from the chart's ConfigMap into its pod.
    (path,) = (p for p in compile_all(tmp_path / "compiled") if p.stem == "relearn-train")
    env = kfp_pod_env(list(yaml.safe_load_all(path.read_text())), docs, "deploy")
    assert env["RELEARN_EXPERIMENT_CONFIGMAP"] == f"{NS}/relearn-fraud-experiments"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The shadow's mirror (the chart's shadow is on): the backend reads it for the rollout's state.
    (mirror,) = [
        v for v in objects(docs, "VirtualService") if v["metadata"]["name"] == "relearn-shadow-mirror"
    ]
    cluster.objects[MIRROR] = mirror
    assert kubectl("start", "ab", "--arm", "7=50", "--arm", "8=50", "--control", "7") == 0
    calls(cluster)
    isvc = json.dumps(cluster.objects[ISVC], sort_keys=True)

    # An operator's canary start: the store is read, nothing else.
    assert kubectl_rollout("canary", "start", "8", "--percent", "10") == 1
    assert "refused: experiment 'ab' (ab) is running" in capsys.readouterr().err
    assert calls(cluster) == [("GET", CM)]
    # The pipeline's deploy step under its own rendered Role: one read of the store, a skip.
    cluster.authorize = _authorizer(deploy_role)
    cfg = ControllerSettings()  # RELEARN_ROLLOUT_*: the Kubernetes backend on the release's InferenceService
    assert (cfg.backend, cfg.namespace, cfg.inference_service) == ("kubernetes", NS, "relearn-fraud")
    done = deploy("8", gate_passed=True, rollout_mode="canary", settings=cfg)
    assert done.action == "skipped" and "experiment 'ab' (ab) is running" in done.reason
    assert calls(cluster) == [("GET", CM)]
    assert json.dumps(cluster.objects[ISVC], sort_keys=True) == isvc
    assert cluster.forbidden == [] and cluster.rejected == []

    # Experiment stopped: the same step starts the canary (the Role allows exactly these calls).
    data = json.loads(cluster.objects[CM]["data"]["experiments.json"])
    data["ab"]["status"] = "stopped"
    cluster.objects[CM]["data"]["experiments.json"] = json.dumps(data)
    assert deploy("8", gate_passed=True, rollout_mode="canary", settings=cfg).action == "canary"
    reads = [("GET", ISVC), ("GET", MIRROR)]  # the backend's state: the InferenceService and the mirror
    assert calls(cluster) == [("GET", CM), *reads, ("GET", ISVC), ("PATCH", ISVC), *reads]
    assert cluster.forbidden == []
