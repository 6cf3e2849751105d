"""The cluster rehearsal (`make rehearse`): the rendered chart run as a cluster would, then the story.

``helm template`` output becomes processes (tests/rehearsal/): each workload's command, args and env
(ConfigMaps, Secrets, downward API) plus what the controllers add (KServe's transformer args and env,
Knative's env), each Service on its own loopback address with its in-cluster DNS names in /etc/hosts,
kube-proxy forwarding to ready pods only, restarts with back-off. Upstream servers are the pinned versions:
MLflow with the chart's exact args over PostgreSQL, Redis, Prometheus configured from the ServiceMonitors
and PrometheusRules the Prometheus Operator of kube-prometheus-stack would select. Then: a pipeline run with
the env a KFP pod gets (it bootstraps the streaming state), predictions through the InferenceService's host,
payload events into the detector, the state in the chart's Redis following scored transactions and a
chargeback posted to the feature feed (through a kill -9 of that Redis), every client of the state's Redis
a pod its NetworkPolicy admits, scrapes, and the chart's `helm test` hooks. What a rehearsal cannot see is
in the README (scheduling, CNI, Knative autoscaling, image pulls).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import CHART, HELM, NAMESPACE, ROOT, _run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(HELM is None, reason="helm missing: run .ci/install-tools.sh"),
    pytest.mark.skipif(not os.access("/etc/hosts", os.W_OK), reason="the rehearsal writes /etc/hosts (root)"),
]

PY = str(ROOT / ".venv" / "platform" / "bin" / "python")
FQDN = "svc.cluster.local"
SECRETS = [  # what the install guide has the operator create before `helm install`
    {
        "kind": "Secret",
        "metadata": {"name": "relearn-mlflow-postgres"},
        "stringData": {"username": "mlflow", "password": "rehearsal-secret-pw"},
    }
]
PIPELINE = ["--start", "2026-02-02", "--days", "24", "--users", "800", "--merchants", "150", "--seed", "3"]
PIPELINE += ["--epochs", "6", "--patience", "3", "--label-maturity-days", "7"]
TRANSACTION = {
    "transaction_id": "rehearsal-1", "event_timestamp": "2026-02-20T12:00:00Z", "user_id": "u000001",
    "merchant_id": "m00001", "amount": 42.5, "currency": "EUR", "merchant_category": "grocery",
    "channel": "pos", "country": "DE", "device_id": "d1",
}  # fmt: skip
PREDICT = f"http://relearn-fraud.{NAMESPACE}.{FQDN}/v1/models/relearn-fraud:predict"
FEED = f"http://relearn-feature-feed.{NAMESPACE}.{FQDN}:8090"
DETECTOR = f"http://relearn-drift-detector.{NAMESPACE}.{FQDN}:8090"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def transaction(**fields: Any) -> dict[str, Any]:
    """TRANSACTION now: the chart's state takes events within its lateness bound of the wall clock."""
    return {**TRANSACTION, "event_timestamp": iso(time.time()), **fields}


# An install that runs pipelines (defaults plus Kubeflow Pipelines: its run pods' ConfigMap and RBAC), with
# the controller analysing every 2 s over 30 s windows from 20 canary requests, as an operator may tune it.
# The chart's promotion policy stands: the promotion needs evidence. A canary's own chargebacks come weeks
# later (MIN_LABELS out of reach says so here), so the test posts chargebacks for served transactions and
# the controller's backtest (the detector's GET /v1/backtest/..., its log on the detector's volume) must
# supply the evidence.
CONTROLLER = {
    "INTERVAL_SECONDS": "2", "WINDOW": "30s", "MIN_REQUESTS": "20", "MIN_LABELS": "1000000",
    "BACKTEST_MIN_ROWS": "100", "BACKTEST_MIN_POSITIVES": "5",
}  # fmt: skip
VALUES = ["--set", "kubeflow.enabled=true", "--set-json"]
VALUES += [
    "rollout.extraEnv="
    + json.dumps([{"name": f"RELEARN_ROLLOUT_{k}", "value": v} for k, v in CONTROLLER.items()])
]
API_IP = "127.0.3.1"  # kubernetes.default.svc


def render(*extra: str) -> list[dict[str, Any]]:
    """The chart as `helm install` would apply it (RELEARN_REHEARSAL_CHART: rehearse another copy)."""
    chart = os.environ.get("RELEARN_REHEARSAL_CHART", str(CHART))
    out = _run([HELM, "template", "relearn", str(chart), "-n", NAMESPACE, *VALUES, *extra])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def http(url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]


@pytest.fixture(scope="module")
def cluster():
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from rehearsal.cluster import Cluster
    from rehearsal.prometheus import Prometheus

    root = Path(
        tempfile.mkdtemp(prefix="relearn-rehearsal-", dir="/tmp")
    )  # /tmp: PostgreSQL's user reaches it
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    from rehearsal.apiserver import ApiServer, custom_objects

    docs = [d for d in render() if d not in hooks(render())]
    api = ApiServer(docs, custom_objects(docs), root / "apiserver", API_IP).__enter__()
    c = Cluster(docs, SECRETS, root, NAMESPACE, api=api)
    c.net.audited = {"relearn-state-redis"}  # who connects to the state's Redis (its NetworkPolicy's peers)
    prometheus = None
    try:
        c.start()
        prometheus = Prometheus(c, root / "prometheus").start()
        c.prometheus = prometheus
        yield c
    finally:
        if prometheus is not None:
            prometheus.close()
        c.close()
        api.__exit__(None, None, None)
        shutil.rmtree(root, ignore_errors=True)


def pod(cluster, prefix: str) -> str:
    """The pod of a workload; of an InferenceService component, its latest revision."""
    return sorted(n for n in cluster.pods if n.startswith(prefix))[-1]


def test_stores_mlflow_and_detector_come_up_before_any_model(cluster) -> None:
    stores = ("relearn-postgres", "relearn-mlflow", "relearn-redis", "relearn-state-redis")
    names = [pod(cluster, p) for p in (*stores, "relearn-drift-detector", "relearn-feature-feed")]
    cluster.wait_ready(names, timeout=150)
    assert http(f"{FEED}/healthz") == (200, {"status": "ok"})  # the feed's Service, by its in-cluster name
    # The detector stores events before a champion exists: its Service has endpoints (item 10).
    detector = cluster.pods[pod(cluster, "relearn-drift-detector")]
    assert detector.ready() and detector.restarts == 0
    # MLflow answers the API on its in-cluster name, not only /health (item 3).
    status, body = http(
        f"http://relearn-mlflow.{NAMESPACE}.{FQDN}:5000/api/2.0/mlflow/experiments/search?max_results=1"
    )
    assert status == 200, body
    assert cluster.pods[pod(cluster, "relearn-mlflow")].restarts == 0


def kfp_env(cluster) -> dict[str, str]:
    """What a KFP run pod gets: the pipeline's kubernetes platform spec resolved against the release."""
    from rehearsal import kfp_pod

    compiled = subprocess.run(
        [PY, "-m", "pipelines.compile", "--out", str(cluster.root / "compiled")], cwd=ROOT
    )
    assert compiled.returncode == 0
    package = cluster.root / "compiled" / "relearn-train.yaml"  # the training pipeline, not recalibrate
    spec = list(yaml.safe_load_all(package.read_text()))
    return kfp_pod.kfp_pod_env(spec, render(), "train")


def test_a_pipeline_run_with_a_kfp_pods_env_trains_into_the_clusters_mlflow_and_feast(cluster) -> None:
    from rehearsal.readback import STATE_PREFIX, state_redis

    env = {**os.environ, **kfp_env(cluster)}
    env.pop("RELEARN_HOME", None)  # kfp.local's stand-in keeps its own outputs
    run = subprocess.Popen(
        [PY, "-m", "pipelines.run", "--pipeline-root", str(cluster.root / "runs"), *PIPELINE],
        cwd=cluster.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    # Its connections count as a KFP run pod's (namespace kubeflow.runNamespace) in the state's audit.
    cluster.guests[run.pid] = ("kfp-run", "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"})
    out, err = run.communicate(timeout=900)
    assert run.returncode == 0, out[-3000:] + err[-3000:]
    # The features step bootstrapped the transformers' state in the chart's Redis, not a pod-local file.
    state = state_redis(cluster, pod(cluster, "relearn-state-redis"))
    assert next(state.scan_iter(f"{STATE_PREFIX}u:*", count=1000), None), "no card in the state"
    status, body = http(
        f"http://relearn-mlflow.{NAMESPACE}.{FQDN}:5000/api/2.0/mlflow/registered-models/alias?name=relearn-fraud&alias=champion"
    )
    assert status == 200, body  # the champion is in the cluster's registry, not a pod-local SQLite (item 5)


def isvc_path(cluster) -> str:
    return next(p for p in cluster.api.server.objects if p.endswith("/inferenceservices/relearn-fraud"))


def predictor_uri(isvc: dict[str, Any]) -> str:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return next(e["value"] for e in container["env"] if e["name"] == "RELEARN_PREDICTOR_MODEL_URI")


def test_the_controller_pins_the_stable_revision_to_the_champions_version(cluster) -> None:
    # Item 9: "@champion" would be resolved anew by every restarted pod of the stable revision.
    path, deadline = isvc_path(cluster), time.monotonic() + 90
    while (
        time.monotonic() < deadline
        and predictor_uri(cluster.api.server.objects[path]) != "models:/relearn-fraud/1"
    ):
        time.sleep(1)
    assert predictor_uri(cluster.api.server.objects[path]) == "models:/relearn-fraud/1"


def test_serving_starts_with_kserves_args_and_answers_on_the_isvc_host(cluster) -> None:
    names = [pod(cluster, "relearn-fraud-predictor"), pod(cluster, "relearn-fraud-transformer")]
    # The predictor crash-loops until the first champion exists, as in a fresh cluster; the pinned revision
    # takes the traffic once it is ready.
    cluster.wait_ready(names, timeout=240)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cluster.revisions["relearn-fraud"].rolled_out != names[0]:
        time.sleep(0.5)
    assert cluster.revisions["relearn-fraud"].rolled_out == names[0]
    log = cluster.pods[names[1]].log.read_text(errors="replace")
    assert "unrecognized arguments" not in log  # item 1: KServe's injected args are accepted
    for i in range(20):
        status, body = http(PREDICT, {"instances": [transaction(transaction_id=f"rehearsal-{i}")]})
        assert status == 200, body
        (prediction,) = body["predictions"]
        assert 0 <= prediction["score"] <= 1


def detector_metric(name: str, default: float | None = 0.0, **labels: str) -> float | None:
    """The sum of the detector's ``name`` samples carrying ``labels``; ``default`` when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(
        f"http://relearn-drift-detector.{NAMESPACE}.{FQDN}:8090/metrics", timeout=5
    ) as r:
        families = text_string_to_metric_families(r.read().decode())
    values = [
        s.value for f in families for s in f.samples if s.name == name and labels.items() <= s.labels.items()
    ]
    return sum(values) if values else default


def test_every_prediction_reaches_the_detector_as_a_request_response_pair(cluster) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and detector_metric("relearn_drift_events_ingested_total") < 40:
        time.sleep(1)
    assert (
        detector_metric("relearn_drift_events_ingested_total") == 40
    )  # 20 predictions × (request, response)


def test_scored_transactions_and_a_posted_chargeback_move_the_state_in_the_charts_redis(cluster) -> None:
    from rehearsal.readback import STATE_PREFIX, served, state_redis

    tag = uuid.uuid4().hex[:8]
    card, merchant, t0 = f"card-{tag}", f"merchant-{tag}", time.time() - 120

    def score(n: int) -> None:
        row = transaction(
            transaction_id=f"{tag}-{n}", user_id=card, merchant_id=merchant, event_timestamp=iso(t0 + n)
        )
        deadline = time.monotonic() + 60
        while (answer := http(PREDICT, {"instances": [row]}))[0] != 200 and time.monotonic() < deadline:
            time.sleep(1)  # 503 while the state's Redis restarts; the retry is idempotent (transaction_id)
        assert answer[0] == 200, answer

    score(1)
    score(1)  # a client's retry: counted once
    score(2)
    # kill -9 of the state's Redis after the acknowledgements; the kubelet restarts it with the rendered args.
    name = pod(cluster, "relearn-state-redis")
    redis_pod = cluster.pods[name]
    os.killpg(redis_pod.popen.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (redis_pod.restarts == 1 and redis_pod.ready()):
        time.sleep(0.5)
    assert redis_pod.restarts == 1, cluster.tail(name)
    # A dispute stream posts the chargeback of the first transaction to the feed's Service (it would retry a
    # 5xx: the record is idempotent).
    chargeback = {"transaction_id": f"{tag}-1", "merchant_id": merchant, "received_timestamp": iso(t0 + 2.5)}
    deadline = time.monotonic() + 30  # the feed's pooled connections may still meet the loading Redis: 503
    while (answer := http(f"{FEED}/chargebacks", [chargeback]))[0] == 503 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer == (200, {"accepted": 1, "new": 1}), (
        answer,
        cluster.tail(pod(cluster, "relearn-feature-feed")),
    )
    score(3)

    ids = [f"{tag}-{n}" for n in (1, 2, 3)]
    rows = served(cluster, ids, claim="relearn-drift-detector")
    # Read-your-writes through the chart's Redis (kill -9 included): each later transaction of the card
    # sees one more, the retry none; the chargeback moved the merchant's rate (1 of its 2 transactions).
    assert [rows[i]["user_txn_count_1h"] for i in ids] == [0, 1, 2], rows
    assert [rows[i]["merchant_chargeback_rate_30d"] for i in ids] == [0, 0, 0.5], rows
    state = state_redis(cluster, name)
    assert state.zcard(f"{STATE_PREFIX}u:{{{card}}}") == 3
    assert state.config_get("appendfsync") == {"appendfsync": "everysec"}  # the rendered args, honoured
    assert list((cluster.root / "pvc" / "relearn-state-redis").glob("appendonlydir/*.aof"))


def test_every_client_of_the_state_is_a_pod_its_network_policy_admits(cluster) -> None:
    from rehearsal.netpol import Pod, allowed

    (service,) = [p for p in cluster.net.ports.values() if p.service == "relearn-state-redis"]
    clients = set(service.clients)
    assert None not in clients, service.clients  # every connection came from a pod's process
    wanted = {pod(cluster, "relearn-fraud-transformer"), pod(cluster, "relearn-feature-feed"), "kfp-run"}
    assert wanted <= clients, clients
    redis = cluster.identity(pod(cluster, "relearn-state-redis"))
    for name in clients:
        assert allowed(cluster.docs, cluster.identity(name), redis, 6379), name
    for name in (pod(cluster, "relearn-fraud-predictor"), pod(cluster, "relearn-drift-detector")):
        assert not allowed(cluster.docs, cluster.identity(name), redis, 6379), name
    feed = cluster.identity(pod(cluster, "relearn-feature-feed"))
    assert allowed(cluster.docs, Pod(NAMESPACE, {"app": "dispute-stream"}), feed, 8090)  # who posted above
    assert allowed(cluster.docs, Pod("monitoring", {}), feed, 8090)  # Prometheus


def test_prometheus_scrapes_serving_and_detector_and_loads_the_rules(cluster) -> None:
    prometheus = cluster.prometheus
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        up = prometheus.value('count(up{namespace="relearn"} == 1)')
        served = prometheus.value('sum(relearn_serving_requests_total{relearn_io_role="fraud"})')
        if up and up >= 3 and served and served >= 20:
            break
        time.sleep(1)
    assert up and up >= 3, prometheus.api("targets")  # item 6: the ServiceMonitors are selected
    assert served and served >= 20
    # The feed is scraped too, its chargeback counted.
    query = 'sum(relearn_feature_feed_records_total{kind="chargeback",outcome="ok"})'
    while time.monotonic() < deadline + 30 and prometheus.value(query) != 1:
        time.sleep(1)
    assert prometheus.value('up{service="relearn-feature-feed"}') == 1, prometheus.api("targets")
    assert prometheus.value(query) == 1
    groups = prometheus.api("rules")["groups"]
    assert sum(len(g["rules"]) for g in groups) > 0  # the PrometheusRule is selected too


def test_helm_test_hooks_pass(cluster) -> None:
    from rehearsal.kubelet import process

    tests = hooks(render())
    assert tests, "the chart has helm test hooks"
    for doc in tests:
        name = doc["metadata"]["name"]
        spec = {
            "name": name,
            "namespace": NAMESPACE,
            "ip": cluster.net.pod_ip(),
            "labels": {},
            "spec": doc["spec"],
        }
        proc = process(
            spec,
            doc["spec"]["containers"][0],
            cluster.objects,
            cluster.root / "pods" / name,
            cluster.root / "pvc",
        )
        done = subprocess.run(
            proc.argv, env=proc.env, capture_output=True, text=True, timeout=300, cwd=proc.env["HOME"]
        )
        assert done.returncode == 0, f"{name}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


class Load:
    """Predictions on the InferenceService's host from a thread, counting answers by status."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in itertools.count():
            if self.stop.wait(0.05):
                return
            status, _ = http(PREDICT, {"instances": [transaction(transaction_id=f"load-{i}")]})
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.sent = i + 1

    sent = 0

    def close(self) -> dict[int, int]:
        self.stop.set()
        self.thread.join(timeout=15)
        return self.statuses


def test_a_canary_is_stepped_and_promoted_by_the_controller_within_its_rbac(cluster) -> None:
    import mlflow
    from mlflow import MlflowClient

    api = cluster.api
    client = MlflowClient(f"http://relearn-mlflow.{NAMESPACE}.{FQDN}:5000")
    champion = client.get_model_version_by_alias("relearn-fraud", "champion")
    # Version 2: the champion's model registered again (a retrain that changed nothing passes every gate).
    mlflow.set_tracking_uri(client.tracking_uri)
    v2 = mlflow.register_model(champion.source, "relearn-fraud", tags=champion.tags)
    env = {**os.environ, "KUBECONFIG": str(api.admin_kubeconfig())}
    kubectl = [str(ROOT / ".venv" / "platform" / "bin" / "kubectl-relearn"), "-n", NAMESPACE]
    load = Load()
    try:
        start = subprocess.run([*kubectl, "canary", "start", v2.version, "--percent", "10"], env=env,
                               text=True,
                               capture_output=True, timeout=60)  # fmt: skip
        assert start.returncode == 0, start.stdout + start.stderr
        path = isvc_path(cluster)
        controller = pod(cluster, "relearn-rollout")
        # No labels yet: the controller steps to 50 % and holds there, waiting for evidence.
        deadline = time.monotonic() + 240
        waiting = "waiting for evidence before 100%"
        while time.monotonic() < deadline and waiting not in cluster.tail(controller):
            time.sleep(1)
        isvc = api.server.objects[path]
        assert isvc["spec"]["predictor"].get("canaryTrafficPercent") == 50, cluster.tail(controller, 30)
        assert "backtest unknown" in cluster.tail(controller), cluster.tail(controller, 30)
        # A dispute stream posts chargebacks for every 10th transaction served so far (on both models).
        frauds = [f"load-{i}" for i in range(0, load.sent, 10)]
        received = iso(time.time())
        records = [{"transaction_id": t, "chargeback_timestamp": received} for t in frauds]
        assert http(f"{DETECTOR}/labels", records)[0] == 202
        deadline = time.monotonic() + 180
        promoted = False
        while time.monotonic() < deadline and not promoted:
            isvc = api.server.objects[path]
            promoted = "canaryTrafficPercent" not in isvc["spec"]["predictor"] and any(
                r["path"] == path and r["method"] == "PATCH" and r["user"] != "cluster-admin"
                for r in api.server.requests
            )
            time.sleep(1)
        assert promoted, f"not promoted: {isvc['spec']['predictor']} {cluster.tail(controller, 30)}"
    finally:
        statuses = load.close()
    # The audit trail (on the controller's volume) records the evidence of the promotion.
    (trail,) = (cluster.root / "pvc").rglob("audit.jsonl")
    entries = [json.loads(line) for line in trail.read_text().splitlines()]
    promotion = next(e for e in entries if e["action"] == "promote" and e.get("version") == v2.version)
    evidence = promotion["evidence"]
    assert evidence["source"] == "backtest" and evidence["verdict"] == "passed", promotion
    assert evidence["n"] >= 100 and evidence["positives"] >= 5 and evidence["effect"] == 0.0, evidence
    assert client.get_model_version_by_alias("relearn-fraud", "champion").version == v2.version
    assert set(statuses) == {200}, statuses  # no failed request through the whole rollout
    # The controller stepped the canary itself, every call allowed by its Role, none refused.
    sa = f"system:serviceaccount:{NAMESPACE}:relearn-rollout"
    calls = {(m, p.split("?")[0]) for u, m, p in api.calls() if u == sa}
    patches = [r["body"] for r in api.server.requests if r.get("user") == sa and r["method"] == "PATCH"]
    percents = [b["spec"]["predictor"].get("canaryTrafficPercent") for b in patches if "spec" in b]
    assert percents[-1] is None and {25, 50} <= set(percents), percents
    assert calls <= {("GET", path), ("PATCH", path)}, calls
    assert not api.server.forbidden, api.server.forbidden
    # The canary's payload events reached the detector's canary track (its version is not the stable one).
    _, body = http(f"{DETECTOR}/status")
    assert body["open"].get("canary", 0) > 0, body["open"]
