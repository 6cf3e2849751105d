"""The rehearsal of `production-values.yaml`: every workload starts as the cluster would start it.

The same machinery as tests/chart/test_rehearsal.py (the story runs there on the defaults); here the
production settings boot: MLflow with two replicas' worth of args over PostgreSQL and an S3 artifact
destination (its credentials from the Secret the install guide has you create), Redis with persistence and two
read replicas, the streaming state's Redis (fsynced AOF) and the feature feed, the Feast registry server, the
drift detector, the rollout controller with its API access, the shadow InferenceService as a
RawDeployment, Prometheus with the operator-selected targets. Serving needs a champion, which the default
rehearsal trains; here the serving pods only have to start their processes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from test_rehearsal import (  # noqa: F401
    API_IP,
    FQDN,
    NAMESPACE,
    SECRETS,
    detector_metric,
    http,
    pytestmark,
    render,
)

from support.chart import CHART

PRODUCTION = ["-f", str(CHART / "ci" / "production-values.yaml")]
S3_SECRET = {  # what the install guide has the operator create for S3 artifacts
    "kind": "Secret",
    "metadata": {"name": "relearn-mlflow-s3"},
    "stringData": {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal-secret"},
}


SKEW = "relearn_feature_skew"


def _write_lake(root: Path) -> None:
    """A small lake as the ingest job leaves it (day-partitioned transactions and labels)."""
    from relearn.data.__main__ import GenerateSettings, run

    run(GenerateSettings(out=root, days=2, users=50, merchants=20, progress=False))


@pytest.fixture(scope="module")
def cluster():
    from rehearsal.apiserver import ApiServer, custom_objects
    from rehearsal.cluster import Cluster

    root = Path(tempfile.mkdtemp(prefix="relearn-rehearsal-", dir="/tmp"))
    root.chmod(0o755)
    docs = render(*PRODUCTION)
    _write_lake(root / "pvc" / "relearn-lake" / "lake")  # the volume the detector's skew check reads
    api = ApiServer(docs, custom_objects(docs), root / "apiserver", API_IP).__enter__()
    c = Cluster(docs, [*SECRETS, S3_SECRET], root, NAMESPACE, api=api)
    try:
        yield c.start()
    finally:
        c.close()
        api.__exit__(None, None, None)
        shutil.rmtree(root, ignore_errors=True)


def test_every_production_workload_starts_and_the_stores_serve(cluster) -> None:
    stores = [
        n
        for n in cluster.pods
        if n.startswith(("relearn-postgres", "relearn-mlflow", "relearn-redis", "relearn-state-redis"))
    ]
    others = [
        n
        for n in cluster.pods
        if n.startswith(("relearn-drift-detector", "relearn-feast-registry", "relearn-feature-feed"))
    ]
    assert len([n for n in stores if n.startswith("relearn-redis-replica")]) == 1  # one pod per workload here
    cluster.wait_ready(stores + others, timeout=180)
    status, body = http(
        f"http://relearn-mlflow.{NAMESPACE}.{FQDN}:5000/api/2.0/mlflow/experiments/search?max_results=1"
    )
    assert status == 200, body
    # The read replicas follow the persistent primary (their Service is what transformers read from).
    import redis

    replica = redis.Redis(host=f"relearn-redis-replica.{NAMESPACE}.{FQDN}", port=6379, socket_timeout=5)
    assert replica.info("replication")["master_link_status"] == "up"
    # The state's Redis runs with the rendered durability (an acknowledged update is fsynced), the feed
    # answers on its Service.
    state = redis.Redis(host=f"relearn-state-redis.{NAMESPACE}.{FQDN}", port=6379, socket_timeout=5)
    assert state.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert state.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert http(f"http://relearn-feature-feed.{NAMESPACE}.{FQDN}:8090/healthz") == (200, {"status": "ok"})
    # Serving and the controller run (no champion yet: the predictor waits for one, as on a fresh install).
    for name in ("relearn-fraud-transformer", "relearn-fraud-shadow-transformer", "relearn-rollout"):
        pod = cluster.pods[sorted(n for n in cluster.pods if n.startswith(name))[-1]]
        assert pod.popen is not None and "unrecognized arguments" not in pod.log.read_text(errors="replace")


def test_the_detector_checks_skew_against_the_mounted_lake(cluster) -> None:
    """production-values turns the skew check on: the rendered env and read-only lake mount reach it."""
    detector = next(n for n in cluster.pods if n.startswith("relearn-drift-detector"))
    cluster.wait_ready([detector], timeout=180)

    from support.serving_stack import wait_until

    wait_until(
        "the first skew check",
        lambda: detector_metric(f"{SKEW}_last_check_timestamp_seconds", track="stable") > 0,
        cluster.pods[detector].popen,
        cluster.pods[detector].log,
        timeout=60,
    )
    assert detector_metric(f"{SKEW}_check_errors_total", default=None) == 0
    rows = detector_metric(f"{SKEW}_rows", default=None, track="stable")
    assert rows == 0  # nothing served yet: nothing skewed


def test_ingest_replicas_take_the_payload_log_and_the_monitor_relays_it(cluster) -> None:
    """production-values runs ingest replicas on MLflow's PostgreSQL (user and password from its Secret):
    an event posted to their Service in KServe's binary mode reaches the monitor through the shared log,
    before any champion exists."""
    import json
    import urllib.request

    import numpy as np

    from relearn.events import REQUEST_TYPE, binary_headers
    from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
    from relearn.serving import tensors
    from support.serving_stack import wait_until

    replica = next(n for n in cluster.pods if n.startswith("relearn-drift-ingest"))
    detector = next(n for n in cluster.pods if n.startswith("relearn-drift-detector"))
    cluster.wait_ready([replica, detector], timeout=180)
    numeric = np.ones((2, len(NUMERIC_INPUTS)), dtype=np.float32)
    categorical = np.array([["x"] * len(CATEGORICAL_INPUTS)] * 2, dtype=object)
    body = tensors.v2_json(
        [
            (tensors.NUMERIC, "FP32", list(numeric.shape), numeric),
            (tensors.CATEGORICAL, "BYTES", list(categorical.shape), categorical),
        ],
        "rehearsal-1",
    )
    headers = binary_headers(
        event_id="rehearsal-1",
        event_type=REQUEST_TYPE,
        source="http://relearn-fraud-predictor/",
        inference_service="relearn-fraud",
        namespace=NAMESPACE,
        component="predictor",
    )
    request = urllib.request.Request(
        f"http://relearn-drift-ingest.{NAMESPACE}.{FQDN}:8090/",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202

    def relayed() -> float:
        return detector_metric("relearn_drift_relayed_events_total")

    pod = cluster.pods[detector]
    wait_until("the monitor relays the replica's event", lambda: relayed() >= 1, pod.popen, pod.log, 60)
