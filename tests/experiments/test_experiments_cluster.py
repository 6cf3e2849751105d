"""``kubectl relearn experiment`` in the cluster, on the loopback stand-in API server holding the chart's
objects: the store in the ConfigMap the transformers mount, arms checked against the experiment router,
the winner promoted through the rollout path (the fraud InferenceService's canary). Every call is checked
against the chart's experiments Role (verb, resource, name) and listed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experiments_chart import ALL

from relearn.experiments.promote import winner_of
from relearn.experiments.result import Decision, Result
from relearn.experiments.routing import RunningExperiment
from relearn.rollout.cli import run
from support.chart import needs_helm, objects, rendered
from support.crds import CRDS
from support.kube_api import MERGE, FakeApiServer

NS = "relearn"
CM = f"/api/v1/namespaces/{NS}/configmaps/relearn-fraud-experiments"
VS = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices/relearn-experiment-router"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/relearn-fraud"
VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}
pytestmark = [needs_helm, pytest.mark.skipif(not CRDS.is_dir(), reason=f"{CRDS} missing (upstream CRDs)")]


def _result(treatment: str, decision: Decision, winner: str | None, effect: float) -> dict:
    return Result(
        "ab", "7", treatment, decision, winner, effect, -0.1, -0.2, -0.01, 0.001, {}, 20.0, ""
    ).as_dict()


def _authorizer(role: dict):
    """RBAC as the API server applies the rendered Role: (group, resource, name, verb) must be granted."""
    granted = {
        (group, resource, name, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule["resourceNames"]
        for verb in rule["verbs"]
    }

    def authorize(token: str | None, method: str, path: str) -> str | None:
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource, name = parts[-2], parts[-1]
        return token if token == "alice" and (group, resource, name, VERBS[method]) in granted else None

    return authorize


@pytest.fixture
def cluster(settings, tmp_path: Path, monkeypatch, request):
    docs = rendered("default", *ALL, *getattr(request, "param", ()))  # param: more chart values
    (role,) = [r for r in objects(docs, "Role") if r["metadata"]["name"] == "relearn-experiments"]
    by_path = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        if (doc["kind"], name) in {
            ("ConfigMap", "relearn-fraud-experiments"),
            ("VirtualService", "relearn-experiment-router"),
            ("InferenceService", "relearn-fraud"),
        }:
            by_path[{"ConfigMap": CM, "VirtualService": VS, "InferenceService": ISVC}[doc["kind"]]] = doc
    with FakeApiServer(by_path, authorize=_authorizer(role)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", token="alice")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield api


def kubectl(*argv: str) -> int:
    top = ["--backend", "kubernetes", "-n", NS, "--inference-service", "relearn-fraud", "experiment"]
    opts = [
        "--no-registry",
        "--configmap",
        f"{NS}/relearn-fraud-experiments",
        "--router",
        "relearn-experiment-router",
    ]
    return run([*top, *opts, *argv])


def calls(api: FakeApiServer) -> list[tuple[str, str]]:
    """The calls since the last look, (method, path); every patch a JSON merge patch."""
    out = [(r["method"], r["path"].split("?")[0]) for r in api.requests]
    assert {p["content_type"] for p in api.patches()} <= {MERGE}
    api.requests.clear()
    return out


def test_start_stop_promote_with_exact_calls_under_the_role(cluster: FakeApiServer, tmp_path, capsys) -> None:
    # An arm the router cannot route (no InferenceService serves version 9): refused, nothing written.
    assert kubectl("start", "ab", "--arm", "7=50", "--arm", "9=50", "--control", "7") == 2
    assert "no route for arm(s) ['9']" in capsys.readouterr().err
    assert calls(cluster) == [("GET", VS)]

    assert kubectl("start", "ab", "--arm", "7=50", "--arm", "v8=50", "--control", "7") == 0
    # The InferenceService read: no canary runs on the traffic (else refused, see the end).
    assert calls(cluster) == [("GET", VS), ("GET", ISVC), ("GET", CM), ("PATCH", CM)]
    store = json.loads(cluster.objects[CM]["data"]["experiments.json"])
    assert store["ab"]["split"] == {"7": 50, "v8": 50} and store["ab"]["status"] == "running"
    # What each transformer reads from its mount: the same salt and split, so the same arm per card.
    mounted = tmp_path / "mount" / "experiments.json"
    mounted.parent.mkdir()
    mounted.write_text(cluster.objects[CM]["data"]["experiments.json"])
    name, salt, split = RunningExperiment(mounted).current()
    assert (name, salt, split.as_dict()) == ("ab", store["ab"]["salt"], {"7": 50, "v8": 50})

    # A second experiment over the same traffic: refused after reading, nothing patched.
    assert kubectl("start", "ab2", "--arm", "7=50", "--arm", "8=50", "--control", "7") == 2
    assert calls(cluster) == [("GET", VS), ("GET", ISVC), ("GET", CM)]

    # Promote refuses a running experiment; once decided it starts version 8 as the canary.
    assert kubectl("promote", "ab") == 2
    assert "still running" in capsys.readouterr().err
    assert calls(cluster) == [("GET", CM)]
    from relearn.experiments.kube_store import ConfigMapStore

    ConfigMapStore(f"{NS}/relearn-fraud-experiments").stop(
        "ab", "decided", result={"v8": _result("v8", Decision.WINNER, "v8", -0.12)}
    )
    calls(cluster)
    assert kubectl("promote", "ab") == 0
    assert calls(cluster) == [("GET", CM), ("GET", ISVC), ("GET", ISVC), ("PATCH", ISVC), ("GET", ISVC)]
    isvc = cluster.objects[ISVC]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10  # the canary schedule's first step
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["RELEARN_PREDICTOR_MODEL_URI"] == "models:/relearn-fraud/8"
    assert isvc["metadata"]["annotations"]["relearn.io/canary-version"] == "8"
    assert cluster.rejected == [] and cluster.forbidden == []

    # A canary is running: a second promotion is refused and patches nothing.
    assert kubectl("promote", "ab") == 2
    assert "not promoted" in capsys.readouterr().err
    assert calls(cluster) == [("GET", CM), ("GET", ISVC)]

    # ... and so is a new experiment over the traffic: the store is not even read.
    assert kubectl("start", "ab3", "--arm", "7=50", "--arm", "8=50", "--control", "7") == 2
    assert "canary 8 is running at 10%" in capsys.readouterr().err
    assert calls(cluster) == [("GET", VS), ("GET", ISVC)]
    assert "ab3" not in json.loads(cluster.objects[CM]["data"]["experiments.json"])


def test_winner_of_refuses_without_a_winner() -> None:
    record = {"name": "ab", "status": "stopped", "control": "7", "result": None}
    with pytest.raises(ValueError, match="no winner"):
        winner_of(record)
    record["result"] = {"8": _result("8", Decision.NO_DIFFERENCE, None, -0.01)}
    with pytest.raises(ValueError, match="no winner \\(no difference\\)"):
        winner_of(record)
    record["result"] = {"8": _result("8", Decision.WINNER, "7", 0.2)}
    with pytest.raises(ValueError, match="control '7' won"):
        winner_of(record)
    record["result"] = {
        "8": _result("8", Decision.WINNER, "8", -0.1),
        "9": _result("9", Decision.WINNER, "9", -0.3),
    }
    assert winner_of(record) == "9", "the largest cut of the loss per card"


@pytest.mark.parametrize("cluster", [("--set", "experiments.versions={7,8,9}")], indirect=True)
def test_a_bandit_in_the_cluster_with_exact_calls(cluster: FakeApiServer, tmp_path, monkeypatch, capsys):
    from test_experiments_bandit_live import DAY, T0, history

    monkeypatch.setenv("RELEARN_EXPERIMENT_ALERT_BUDGET", "0.15")
    assert (
        kubectl("start", "b1", "--mode", "bandit", "--arm", "7", "--arm", "8", "--arm", "9", "--control", "7")
        == 0
    )
    assert calls(cluster) == [("GET", VS), ("GET", ISVC), ("GET", CM), ("PATCH", CM)]
    started = json.loads(cluster.objects[CM]["data"]["experiments.json"])["b1"]["started"]
    h = history(recall={"7": 0.5, "8": 0.6, "9": 0.8})
    h.assign(time=h["time"] - T0 + started).to_parquet(tmp_path / "joined.parquet")
    now = str(started + 30 * DAY)
    assert kubectl("update-bandit", "b1", "--history", str(tmp_path / "joined.parquet"), "--now", now) == 0
    assert calls(cluster) == [("GET", CM), ("PATCH", CM)]  # one read-modify-write under the Role
    stored = json.loads(cluster.objects[CM]["data"]["experiments.json"])["b1"]
    assert stored["shares"]["9"] > 0.85 and min(stored["shares"].values()) >= 0.05 - 1e-3
    # What each transformer reads from its mount: the bandit's shares.
    mounted = tmp_path / "mount" / "experiments.json"
    mounted.parent.mkdir()
    mounted.write_text(cluster.objects[CM]["data"]["experiments.json"])
    name, salt, shares = RunningExperiment(mounted).current()
    assert (name, salt) == ("b1", stored["salt"])
    assert dict(zip(shares.arms, shares.shares, strict=True)) == stored["shares"]
    assert cluster.rejected == [] and cluster.forbidden == []
