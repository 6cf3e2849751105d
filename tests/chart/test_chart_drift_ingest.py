"""The detector's scaled ingest path (driftDetector.ingest): stateless `role ingest` replicas behind their own
Service, autoscaled on CPU, appending to the shared log in MLflow's PostgreSQL, which the one detector relays.

Off by default (the rendered default, and so the rehearsal, is the single detector). On: the payload logger
(relearn and KServe) posts to the replicas, every other caller stays on the detector, the env the chart
renders is what the real DriftSettings read, the policies admit exactly these flows, and a chart without a
PostgreSQL is refused at render time naming the values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from support.chart import (
    CHART,
    HELM,
    NAMESPACE,
    _run,
    _tool,
    assert_valid_kubernetes,
    container_env,
    named,
    needs_helm,
    needs_jsonschema,
    needs_shared,
    objects,
    rendered,
)
from support.crds import crd_errors

ON = ("--set", "driftDetector.ingest.enabled=true")
INGEST = "relearn-drift-ingest"
DETECTOR = "relearn-drift-detector"
PG_URL = "postgresql://relearn-postgres:5432/mlflow"
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}


def _url(service: str) -> str:
    return f"http://{service}.{NAMESPACE}.svc.cluster.local:8090/"


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _settings(monkeypatch: pytest.MonkeyPatch, container: dict[str, Any]) -> Any:
    """The real DriftSettings from a rendered container's literal env (Secrets are checked by reference)."""
    from relearn.monitoring.settings import DriftSettings

    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("RELEARN_DRIFT_")]:
            m.delenv(name)
        for name, value in container_env(container).items():
            if isinstance(value, str):
                m.setenv(name, value)
        return DriftSettings()


def _helm(*args: str) -> Any:
    return _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, *args])


@needs_helm
def test_off_by_default_the_logger_posts_to_the_detector_and_nothing_is_shared() -> None:
    docs = rendered("default")
    assert not [d for d in docs if "drift-ingest" in d["metadata"]["name"]]
    assert not objects(docs, "HorizontalPodAutoscaler")
    env = container_env(_container(docs, DETECTOR))
    assert not {"RELEARN_DRIFT_SHARED_LOG_URL", "PGPASSWORD", "RELEARN_DRIFT_ROLE"} & set(env)
    for isvc in objects(docs, "InferenceService"):
        predictor = container_env(isvc["spec"]["predictor"]["containers"][0])
        assert predictor["RELEARN_PREDICTOR_LOG_SINK_URL"] == _url(DETECTOR)
    peers = named(docs, "NetworkPolicy", "relearn-postgres")["spec"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers] == ["mlflow"]


@needs_helm
def test_production_values_run_the_replicas_and_every_logger_posts_to_them() -> None:
    docs = rendered("production")
    assert {d["kind"] for d in docs if d["metadata"]["name"] == INGEST} >= KINDS
    env = container_env(_container(docs, INGEST))
    assert env["RELEARN_DRIFT_ROLE"] == "ingest" and env["RELEARN_DRIFT_SHARED_LOG_MAX_EVENTS"] == "2000000"
    assert container_env(_container(docs, DETECTOR))["RELEARN_DRIFT_SHARED_LOG_URL"]
    for isvc in objects(docs, "InferenceService"):
        predictor = container_env(isvc["spec"]["predictor"]["containers"][0])
        assert predictor["RELEARN_PREDICTOR_LOG_SINK_URL"] == _url(INGEST)


@needs_helm
def test_on_the_replicas_get_a_deployment_service_hpa_pdb_policy_and_scrapes() -> None:
    docs = rendered("default", *ON)
    mine = {d["kind"] for d in docs if d["metadata"]["name"] == INGEST}
    assert mine == KINDS | {"ServiceMonitor"}
    deployment = named(docs, "Deployment", INGEST)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert (
        selector.items() <= pod_labels.items() and selector["app.kubernetes.io/component"] == "drift-ingest"
    )
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    # the endpoint leaves the proxies before SIGTERM, well within the grace period
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 10
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]  # stateless: no PVC
    assert pod["containers"][0]["command"] == _container(docs, DETECTOR)["command"]
    assert pod["containers"][0]["image"] == _container(docs, DETECTOR)["image"]
    hpa = named(docs, "HorizontalPodAutoscaler", INGEST)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": INGEST}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    # The Service, the PDB and the ServiceMonitor reach these pods, and the detector's Service does not.
    service = named(docs, "Service", INGEST)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in pod["containers"][0]["ports"]}
    assert not named(docs, "Service", DETECTOR)["spec"]["selector"].items() <= pod_labels.items()
    pdb = named(docs, "PodDisruptionBudget", INGEST)["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items() and pdb["maxUnavailable"] == 1
    monitor = named(docs, "ServiceMonitor", INGEST)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # Prometheus selects it


@needs_helm
def test_the_deployment_leaves_replicas_to_the_hpa_and_sets_them_without_it() -> None:
    assert "replicas" not in named(rendered("default", *ON), "Deployment", INGEST)["spec"]
    off = rendered("default", *ON, "--set", "driftDetector.ingest.autoscaling.enabled=false")
    assert not objects(off, "HorizontalPodAutoscaler")
    assert named(off, "Deployment", INGEST)["spec"]["replicas"] == 2
    out = _helm(*ON, "--set", "driftDetector.ingest.autoscaling.minReplicas=9")
    assert out.returncode != 0
    assert "driftDetector.ingest.autoscaling.minReplicas (9) must be at most maxReplicas (8)" in out.stderr


@needs_helm
def test_replicas_and_monitor_read_the_shared_log_of_mlflows_postgres(monkeypatch) -> None:
    docs = rendered("shadow", *ON)
    ingest, monitor = _container(docs, INGEST), _container(docs, DETECTOR)
    replica = _settings(monkeypatch, ingest)
    assert (replica.role, replica.shared_log_url, replica.host, replica.port) == (
        "ingest",
        PG_URL,
        "0.0.0.0",
        8090,
    )
    assert replica.shard == ""  # each process names its own (HOSTNAME + suffix)
    relay = _settings(monkeypatch, monitor)
    assert (relay.role, relay.shared_log_url) == ("all", PG_URL)
    # Both see the shadow's events as track shadow (the replicas read the track from each event).
    assert replica.shadow_service == relay.shadow_service == "relearn-fraud-shadow"
    # Same database, host, port and credentials as MLflow's backend store.
    mlflow = _container(docs, "relearn-mlflow")
    store = next(a for a in mlflow["args"] if a.startswith("--backend-store-uri="))
    assert store.split("//", 1)[1] == PG_URL.split("//", 1)[1]
    for container in (ingest, monitor):
        env = container_env(container)
        for key in ("PGUSER", "PGPASSWORD"):
            assert env[key] == container_env(mlflow)[key], key
        assert "PGPASSWORD" not in env["RELEARN_DRIFT_SHARED_LOG_URL"]


@needs_helm
@pytest.mark.parametrize("via", ["relearn", "kserve"])
def test_the_payload_logger_posts_to_the_replicas_and_the_rest_stays_on_the_detector(via: str) -> None:
    docs = rendered("shadow", *ON, "--set", f"fraud.logger.via={via}")
    isvcs = objects(docs, "InferenceService")
    assert len(isvcs) == 2  # the fraud service and its shadow both log
    for isvc in isvcs:
        predictor = isvc["spec"]["predictor"]
        sink = container_env(predictor["containers"][0])["RELEARN_PREDICTOR_LOG_SINK_URL"]
        if via == "relearn":
            assert sink == _url(INGEST) and "logger" not in predictor
        else:
            assert sink == "" and predictor["logger"]["url"] == _url(INGEST)
    # Labels, status, shadow comparison and backtests are the monitor's routes (404 on a replica).
    assert container_env(_container(docs, "relearn-rollout"))["RELEARN_ROLLOUT_DETECTOR_URL"] == _url(
        DETECTOR
    )
    (check,) = [p for p in objects(docs, "Pod") if p["metadata"]["name"] == "relearn-test-drift"]
    assert f"--drift-url={_url(DETECTOR)}" in check["spec"]["containers"][0]["args"]
    kubeflow = rendered("kubeflow", *ON)
    assert container_env(_container(kubeflow, DETECTOR))["RELEARN_DRIFT_SERVICE_URL"] == _url(DETECTOR)


@needs_helm
def test_policies_admit_the_logger_prometheus_and_postgres_and_nothing_else() -> None:
    from rehearsal.netpol import Pod, allowed

    def pod(docs: list[dict[str, Any]], kind: str, name: str) -> Pod:
        return Pod(NAMESPACE, named(docs, kind, name)["spec"]["template"]["metadata"]["labels"])

    docs = rendered("default", *ON)
    (isvc,) = objects(docs, "InferenceService")
    logger = Pod(NAMESPACE, isvc["spec"]["predictor"]["labels"])
    ingest, detector = pod(docs, "Deployment", INGEST), pod(docs, "Deployment", DETECTOR)
    postgres, mlflow = pod(docs, "StatefulSet", "relearn-postgres"), pod(docs, "Deployment", "relearn-mlflow")
    assert allowed(docs, logger, ingest, 8090)
    assert allowed(docs, Pod("monitoring", {}), ingest, 8090)
    assert not allowed(docs, Pod("elsewhere", {}), ingest, 8090)
    assert allowed(docs, ingest, Pod("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
    assert allowed(docs, ingest, postgres, 5432) and allowed(docs, detector, postgres, 5432)
    assert not allowed(docs, ingest, mlflow, 5000)  # egress: DNS and PostgreSQL (and the mesh) only
    assert not allowed(docs, logger, postgres, 5432)
    # Without the replicas the detector never talks to PostgreSQL, and its policy does not admit it.
    assert not allowed(rendered("default"), detector, postgres, 5432)
    # An external PostgreSQL: reachable on its port, wherever it is.
    external = rendered("default", *ON, "--set", "mlflow.postgres.enabled=false",
                        "--set", "mlflow.postgres.host=pg.example.com")  # fmt: skip
    assert not objects(external, "StatefulSet")
    assert allowed(external, ingest, Pod("db", {}, ip="10.9.8.7"), 5432)
    assert not allowed(external, ingest, Pod("db", {}, ip="10.9.8.7"), 6379)
    env = container_env(_container(external, INGEST))
    assert env["RELEARN_DRIFT_SHARED_LOG_URL"] == "postgresql://pg.example.com:5432/mlflow"


@needs_helm
def test_without_a_postgresql_the_chart_refuses_naming_the_values() -> None:
    external_mlflow = (
        "--set",
        "mlflow.enabled=false",
        "--set",
        "mlflow.externalTrackingUri=http://mlflow:5000",
    )
    assert _helm(*external_mlflow).returncode == 0  # the single detector needs none
    out = _helm(*external_mlflow, *ON)
    assert out.returncode != 0
    assert "driftDetector.ingest.enabled needs PostgreSQL" in out.stderr, out.stderr
    assert "mlflow.postgres.enabled" in out.stderr and "mlflow.postgres.host" in out.stderr
    ok = _helm(*external_mlflow, *ON, "--set", "mlflow.postgres.host=pg.example.com")
    assert ok.returncode == 0, ok.stderr


@needs_helm
def test_lint_and_kubernetes_strict_validation_of_the_ingest_objects(tmp_path: Path) -> None:
    lint = _run([HELM, "lint", "--strict", str(CHART), "-n", NAMESPACE, *ON])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    hpa_off = ["--set", "driftDetector.ingest.autoscaling.enabled=false"]
    docs = {
        name: [d for d in rendered("production", *ON, *extra) if d["kind"] in KINDS]
        for name, extra in (("hpa", []), ("fixed", hpa_off))
    }
    files = assert_valid_kubernetes(docs, tmp_path)
    assert sum("HorizontalPodAutoscaler" in f for f in files) == 1


@needs_helm
@needs_shared
@needs_jsonschema
def test_the_service_monitor_is_valid_against_the_upstream_crd() -> None:
    monitor = named(rendered("default", *ON), "ServiceMonitor", INGEST)
    assert not crd_errors(monitor), crd_errors(monitor)


@needs_helm
def test_checkov_on_the_render_with_replicas(tmp_path: Path) -> None:
    checkov = _tool("checkov")
    if checkov is None:
        pytest.skip("checkov missing: run .ci/install-tools.sh")
    out = _helm(*ON)
    assert out.returncode == 0, out.stderr
    (tmp_path / "ingest.yaml").write_text(out.stdout)
    env = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet"], env=env)
    report = json.loads(out.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0, out.stdout[-4000:]
