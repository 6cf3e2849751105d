"""The streaming state in the chart: its Redis, who opens it with which settings, who may reach it.

Rendered with helm (offline). The state's Redis container also runs as rendered (Debian ``redis-server``,
password auth on) with the transformer's rendered env opening the state: an acknowledged update survives a
kill -9 (the AOF is written before the reply; without it the test fails), and a client without the password
reads nothing. That holds with the default ``appendfsync everysec`` (checked in the args): Redis writes the
AOF before it replies and only the fsync waits; ``always`` (a value) also fsyncs before the reply, for a node
crash, which a process kill cannot show. The cluster-level
story (the transformer and the feed updating it through the Services) is in tests/chart/test_rehearsal.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from rehearsal import kserve
from rehearsal.netpol import Pod, allowed
from support.chart import CHART, HELM, NAMESPACE, _run, container_env, named, needs_helm, objects, rendered
from support.redis_auth import AUTH, PASSWORD, RenderedRedis, needs_redis
from support.redis_auth import kubelet_env as _env

URL = f"redis://relearn-state-redis.{NAMESPACE}.svc.cluster.local:6379/0"
STATE = {
    "RELEARN_STATE_BACKEND": "redis",
    "RELEARN_STATE_REDIS_URLS": URL,
    "RELEARN_STATE_CLOCK": "wall",
    "RELEARN_STATE_LATENESS_SECONDS": "3600",
    "RELEARN_STATE_MAX_FUTURE_SECONDS": "300",
}
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())


def _state_env(container: dict) -> dict:
    return {k: v for k, v in container_env(container).items() if k.startswith("RELEARN_STATE_")}


def _feed(docs: list[dict]) -> dict:
    return named(docs, "Deployment", "relearn-feature-feed")


def _pods(docs: list[dict]) -> dict[str, Pod]:
    """Each workload's pod and each InferenceService component's pod (labels as KServe sets them)."""
    pods = {
        d["metadata"]["name"]: Pod(NAMESPACE, d["spec"]["template"]["metadata"]["labels"])
        for d in objects(docs, "Deployment") + objects(docs, "StatefulSet")
    }
    for isvc in objects(docs, "InferenceService"):
        pods.update({p["name"]: Pod(NAMESPACE, p["labels"]) for p in kserve.pods(isvc)})
    return pods


@needs_helm
@pytest.mark.parametrize("scenario", ["default", "canary", "shadow", "production"])
def test_transformers_feed_and_kfp_pods_open_one_state(scenario: str) -> None:
    docs = rendered(scenario)
    isvcs = objects(docs, "InferenceService")
    assert len(isvcs) == (2 if scenario in ("shadow", "production") else 1)
    for isvc in isvcs:
        transformer = isvc["spec"]["transformer"]["containers"][0]
        assert _state_env(transformer) == STATE, isvc["metadata"]["name"]
        # No Feast online path left in the transformer (its settings ConfigMap still names the store).
        assert not [k for k in container_env(transformer) if "FEAST" in k or k == "RELEARN_REDIS_PASSWORD"]
        assert not _state_env(isvc["spec"]["predictor"]["containers"][0])  # the predictor has no state
    (feed,) = _feed(docs)["spec"]["template"]["spec"]["containers"]
    assert _state_env(feed) == STATE
    if scenario == "production":  # KFP on: the features step bootstraps the same state
        data = named(docs, "ConfigMap", "relearn-pipeline-env")["data"]
        assert {k: v for k, v in data.items() if k.startswith("RELEARN_STATE_")} == STATE


@needs_helm
def test_the_password_reaches_every_state_client_from_the_secret() -> None:
    docs = rendered("default", *AUTH, "--set", "shadow.enabled=true")
    containers = [i["spec"]["transformer"]["containers"][0] for i in objects(docs, "InferenceService")]
    containers.append(_feed(docs)["spec"]["template"]["spec"]["containers"][0])
    for container in containers:
        assert container_env(container)["RELEARN_STATE_REDIS_PASSWORD"] == {
            "secretKeyRef": {"name": "redis-auth", "key": "redis-password"}
        }
    (redis,) = named(docs, "Deployment", "relearn-state-redis")["spec"]["template"]["spec"]["containers"]
    assert redis["command"][:2] == ["sh", "-c"] and "requirepass" in redis["command"][2]  # on stdin


@needs_helm
@pytest.mark.parametrize("scenario", ["default", "production"])
def test_the_state_redis_fsyncs_every_write_to_its_own_volume(scenario: str) -> None:
    docs = rendered(scenario)
    values = PRODUCTION["streamingState"]["redis"] if scenario == "production" else {}
    spec = named(docs, "Deployment", "relearn-state-redis")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one writer on an RWO PVC
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction" and flags["--save"] == ""
    assert flags["--dir"] == "/data" and flags["--maxmemory"] == values.get("maxMemory", "1gb")
    # LOADING (AOF replay) is an error reply on which redis-cli still exits 0: ready only on PONG.
    assert container["readinessProbe"]["exec"]["command"][-1].endswith("| grep -q PONG")
    (data,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": "relearn-state-redis"}
    pvc = named(docs, "PersistentVolumeClaim", "relearn-state-redis")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == values.get("persistence", {}).get("size", "4Gi")
    if values:
        assert container["resources"] == values["resources"]
    service = named(docs, "Service", "relearn-state-redis")["spec"]
    assert service["selector"]["app.kubernetes.io/component"] == "state-redis"
    assert service["ports"][0]["port"] == 6379
    # Feast's online store keeps its own Redis, settings and policy.
    assert (
        "--appendfsync"
        not in named(docs, "Deployment", "relearn-redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    )


@needs_helm
def test_the_state_redis_fsync_policy_is_a_value_and_nothing_else() -> None:
    """always buys a node loss's last seconds with an fsync per update; no other policy passes."""
    docs = rendered("default", "--set", "streamingState.redis.appendfsync=always")
    (container,) = named(docs, "Deployment", "relearn-state-redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert dict(zip(args[::2], args[1::2], strict=True))["--appendfsync"] == "always"
    refused = _run([HELM, "template", "r", str(CHART), "--set", "streamingState.redis.appendfsync=no"])
    assert refused.returncode != 0 and "appendfsync" in refused.stderr


@needs_helm
@pytest.mark.parametrize("scenario", ["default", "production"])
def test_network_policies_admit_the_states_clients_and_nobody_else(scenario: str) -> None:
    docs = rendered(scenario)
    pods = _pods(docs)
    redis, feed = pods["relearn-state-redis"], pods["relearn-feature-feed"]
    transformers = [n for n in pods if n.endswith("-transformer-00001")]
    assert len(transformers) == (2 if scenario == "production" else 1)
    kfp_pod = Pod("kubeflow", {"pipelines.kubeflow.org/v2_component": "true"})
    for client in [*(pods[n] for n in transformers), feed, kfp_pod]:
        assert allowed(docs, client, redis, 6379), client
    refused = [n for n in pods if "predictor" in n or n.startswith(("relearn-mlflow", "relearn-drift"))]
    for name in refused:
        assert not allowed(docs, pods[name], redis, 6379), name
    assert not allowed(docs, Pod("team-b", {}), redis, 6379)
    # The transformers no longer reach Feast's Redis; the KFP pods still materialize into it.
    feast = pods["relearn-redis"]
    assert not allowed(docs, pods[transformers[0]], feast, 6379) and allowed(docs, kfp_pod, feast, 6379)

    # The feed: posts from this namespace, scrapes from Prometheus; out only to DNS, the state, istiod.
    assert allowed(docs, Pod(NAMESPACE, {"app": "stream-consumer"}), feed, 8090)
    assert allowed(docs, Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}), feed, 8090)
    assert not allowed(docs, Pod("team-b", {}), feed, 8090)
    assert allowed(docs, feed, Pod("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
    assert allowed(docs, feed, Pod("istio-system", {"app": "istiod"}), 15012)
    assert not allowed(docs, feed, pods["relearn-mlflow"], 5000)


@needs_helm
def test_the_feeds_ingress_is_configurable() -> None:
    consumers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}}]
    docs = rendered("default", "--set-json", f"featureFeed.networkPolicy.from={json.dumps(consumers)}")
    feed = _pods(docs)["relearn-feature-feed"]
    assert allowed(docs, Pod("payments", {}), feed, 8090)
    assert not allowed(docs, Pod(NAMESPACE, {}), feed, 8090)
    assert allowed(docs, Pod("monitoring", {}), feed, 8090)  # Prometheus keeps scraping


@needs_helm
def test_feed_deployment_service_monitor_and_budget() -> None:
    docs = rendered("default")
    deployment = _feed(docs)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("ghcr.io/relearn/relearn-transformer:")
    assert [*container["command"], *container["args"]] == [
        "python", "-m", "relearn.features.feed", "--host", "0.0.0.0", "--port", "8090",
    ]  # fmt: skip
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    service = named(docs, "Service", "relearn-feature-feed")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8090, "targetPort": "http", "protocol": "TCP"}
    ]
    monitor = named(docs, "ServiceMonitor", "relearn-feature-feed")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # monitoring.selectorLabels
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert (
        monitor["spec"]["endpoints"][0]["port"] == "http"
        and monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    )
    pdb = named(docs, "PodDisruptionBudget", "relearn-feature-feed")["spec"]
    assert (
        pdb["maxUnavailable"] == 1
        and pdb["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert _feed(rendered("production"))["spec"]["replicas"] == PRODUCTION["featureFeed"]["replicas"] >= 2
    off = rendered("default", "--set", "featureFeed.enabled=false")
    assert not [d for d in off if "feature-feed" in d["metadata"]["name"]]


@needs_helm
def test_external_shards_replace_the_charts_redis() -> None:
    shards = ["redis://state-0.redis.example:6379/0", "rediss://state-1.redis.example:6380/0"]
    docs = rendered("default", "--set-json", f"streamingState.shards={json.dumps(shards)}")
    assert not [d for d in docs if "state-redis" in d["metadata"]["name"]]
    (feed,) = _feed(docs)["spec"]["template"]["spec"]["containers"]
    assert container_env(feed)["RELEARN_STATE_REDIS_URLS"] == ",".join(shards)  # order places the entities
    policy = named(docs, "NetworkPolicy", "relearn-feature-feed")["spec"]
    assert "state-redis" not in yaml.safe_dump(
        policy
    )  # egress to them: featureFeed.networkPolicy.extraEgress


@needs_helm
@pytest.mark.parametrize(
    "bad",
    [
        "streamingState.clok=wall",
        "streamingState.clock=utc",
        "streamingState.redis.maxMemmory=2gb",
        "featureFeed.replica=2",
        "featureFeed.networkPolicy.form=x",
        "streamingState.shards[0]=redis://:secret@state:6379/0",  # a password is never a value
        "streamingState.shards[0]=redis://a:6379\\,redis://b:6379",  # the list is comma-joined
    ],
)
def test_values_schema_rejects_typos_in_the_state(bad: str) -> None:
    out = _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, "--set", bad])
    assert out.returncode != 0 and "schema" in out.stderr, (bad, out.stderr)


def _open_like_the_transformer(env: dict[str, str], port: int, monkeypatch):
    """The state the transformer's rendered env opens, its Service name pointed at the local server."""
    from relearn.features.state import StateSettings, open_state

    assert env["RELEARN_STATE_REDIS_URLS"] == URL
    for name, value in env.items():
        if name.startswith("RELEARN_STATE_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELEARN_STATE_REDIS_URLS", f"redis://127.0.0.1:{port}/0")
    return open_state(StateSettings())


@needs_helm
@needs_redis
def test_rendered_state_redis_keeps_acknowledged_updates_through_kill_9(tmp_path: Path, monkeypatch) -> None:
    import redis as redis_py

    from relearn.features.state import Event

    docs = rendered("default", *AUTH)
    deployment = named(docs, "Deployment", "relearn-state-redis")
    (isvc,) = objects(docs, "InferenceService")
    env = _env(isvc["spec"]["transformer"]["containers"][0])  # the Secret resolved as the kubelet does
    assert env["RELEARN_STATE_REDIS_PASSWORD"] == PASSWORD

    server = RenderedRedis(deployment, tmp_path / "data")
    server.wait_ready()
    now = int(time.time() * 1e6)
    card = Event("kill-1", now - 2_000_000, "card-1", "merchant-1", 10.0)
    try:
        state = _open_like_the_transformer(env, server.port, monkeypatch)
        (first,) = state.observe([card])
        (second,) = state.observe([Event("kill-2", now - 1_000_000, "card-1", "merchant-1", 20.0)])
        assert (first["user_txn_count_1h"], second["user_txn_count_1h"]) == (0, 1)  # read-your-writes
        state.close()
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=server.port).keys()
    finally:
        server.proc.kill()  # kill -9 right after the acknowledgements: no shutdown, no final fsync
        server.proc.wait(10)
        server.log.close()

    restarted = RenderedRedis(deployment, tmp_path / "data")
    try:
        restarted.wait_ready()
        state = _open_like_the_transformer(env, restarted.port, monkeypatch)
        later = Event("kill-3", now, "card-1", "merchant-1", 30.0)
        (third,) = state.read([later])
        assert third["user_txn_count_1h"] == 2 and third["merchant_txn_count_24h"] == 2
        state.close()
    finally:
        restarted.stop()
