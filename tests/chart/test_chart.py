"""Offline checks of the cluster wiring: charts/relearn, skaffold.yaml, alerts (no cluster needed).

Tools come from ``.ci/install-tools.sh``: helm/kubectl in ``.venv/tools/bin``, promtool (Debian prometheus),
kubernetes-validate and yamllint in ``.venv/chart``. Upstream CRDs and the skaffold schema are read from
``../shared``. Every test skips with the reason when a tool or ``../shared`` is missing.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from support.chart import (
    CHART,
    CUSTOM_GROUPS,
    HELM,
    NAMESPACE,
    ROOT,
    SCENARIOS,
    SHARED,
    _run,
    _tool,
    assert_valid_kubernetes,
    container_env,
    jsonschema,
    named,
    needs_helm,
    needs_jsonschema,
    needs_shared,
    objects,
    pod_specs,
    rendered,
    rendered_text,
)
from support.crds import crd_errors


# -------------------------------------------------------------------------------------------------- tests
@needs_helm
def test_helm_lint_strict() -> None:
    for scenario, args in SCENARIOS.items():
        out = _run([HELM, "lint", "--strict", str(CHART), "-n", NAMESPACE, *args])
        assert out.returncode == 0, f"{scenario}: {out.stdout}{out.stderr}"


@needs_helm
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_render_one_resource_per_template_and_labels(scenario: str) -> None:
    docs = rendered(scenario)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    for d in docs:
        labels = d["metadata"].get("labels", {})
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "InferenceService":
            # KServe copies these into the revision template: a release-specific label = a new revision.
            assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels), where
        else:
            assert labels.get("helm.sh/chart", "").startswith("relearn-"), where
        assert labels.get("app.kubernetes.io/name") == "relearn", where
        assert labels.get("app.kubernetes.io/instance") == "relearn", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/component"), where
        # The one exception: the KFP run pods' settings live where KFP runs them (kubeflow.runNamespace).
        expected = "kubeflow" if d["metadata"]["name"] == "relearn-pipeline-env" else NAMESPACE
        assert d["metadata"].get("namespace") == expected, where
    for template in (CHART / "templates").rglob("*.yaml"):
        assert template.read_text().count("\nkind:") + template.read_text().startswith("kind:") <= 1, template


def test_every_template_file_holds_one_resource() -> None:
    for template in (CHART / "templates").rglob("*.yaml"):
        kinds = [line for line in template.read_text().splitlines() if line.startswith("kind:")]
        assert len(kinds) == 1, f"{template.name}: {kinds}"


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment right above it (children of free-form maps excepted)."""
    free = ("resources:", "podSecurityContext:", "containerSecurityContext:")
    lines = CHART.joinpath("values.yaml").read_text().splitlines()
    free_indent: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        indent = len(line) - len(line.lstrip())
        if free_indent is not None and indent > free_indent:
            continue
        free_indent = indent if stripped.startswith(free) else None
        previous = next(p.strip() for p in reversed(lines[:i]) if p.strip())
        assert previous.startswith("#"), f"values.yaml:{i + 1} undocumented: {stripped}"


@needs_helm
def test_values_schema_rejects_typos() -> None:
    for bad in ("fraud.canaryTraficPercent=10", "shadow.mirrorPercentge=5", "fraud.exposedProtocol=grpc"):
        out = _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, "--set", bad])
        assert out.returncode != 0, bad
        assert "schema" in out.stderr, out.stderr
    out = _run([HELM, "template", "relearn", str(CHART), "--set", "fraud.canaryTrafficPercent=10"])
    assert out.returncode == 0, out.stderr


@needs_helm
def test_core_objects_valid_kubernetes_strict(tmp_path: Path) -> None:
    assert_valid_kubernetes({scenario: rendered(scenario) for scenario in SCENARIOS}, tmp_path)


@needs_helm
@needs_shared
@needs_jsonschema
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_custom_resources_valid_against_upstream_crds(scenario: str) -> None:
    custom = [d for d in rendered(scenario) if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert custom
    for d in custom:
        assert not crd_errors(d), (d["kind"], d["metadata"]["name"], crd_errors(d))


@needs_helm
@needs_shared
@needs_jsonschema
def test_crd_validation_rejects_unknown_fields() -> None:
    (isvc,) = [d for d in rendered("canary") if d["kind"] == "InferenceService"]
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["canaryTraficPercent"] = typo["spec"]["predictor"].pop("canaryTrafficPercent")
    errors = crd_errors(typo)
    assert any("canaryTraficPercent" in e for e in errors), errors
    (vs,) = [d for d in rendered("shadow") if d["kind"] == "VirtualService"]
    vs = copy.deepcopy(vs)
    vs["spec"]["http"][0]["mirrorPercentge"] = vs["spec"]["http"][0].pop("mirrorPercentage")
    assert any("mirrorPercentge" in e for e in crd_errors(vs))


@needs_helm
def test_security_context_and_resources_on_every_container() -> None:
    for scenario in SCENARIOS:
        for d in rendered(scenario):
            for where, spec in pod_specs(d):
                pod_sc = spec.get("securityContext", {})
                containers = spec.get("containers", []) + spec.get("initContainers", [])
                assert containers, where
                for c in containers:
                    at = f"{scenario}: {where}/{c['name']}"
                    sc = c.get("securityContext", {})
                    assert sc.get("allowPrivilegeEscalation") is False, at
                    assert sc.get("readOnlyRootFilesystem") is True, at
                    assert sc.get("privileged", False) is False, at
                    assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
                    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, at
                    assert (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) > 0, at
                    res = c.get("resources", {})
                    for part in ("requests", "limits"):
                        assert {"cpu", "memory"} <= set(res.get(part, {})), f"{at}: resources.{part}"


@needs_helm
def test_rollout_rbac_is_least_privilege() -> None:
    docs = rendered("default")
    (role,) = objects(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("serving.kserve.io",), ("inferenceservices",)): {"get", "patch"},
        (("networking.istio.io",), ("virtualservices",)): {"get", "patch"},
    }
    assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
    (binding,) = objects(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "relearn-rollout",
    }
    (sa,) = objects(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    for d in docs:  # only the rollout controller gets an API token
        for where, spec in pod_specs(d):
            if "rollout" not in where:
                assert spec.get("automountServiceAccountToken") is False, where


@needs_helm
def test_canary_field_exactly_when_enabled() -> None:
    for scenario in SCENARIOS:
        for isvc in objects(rendered(scenario), "InferenceService"):
            for comp in ("predictor", "transformer"):
                spec = isvc["spec"][comp]
                if scenario == "canary" and isvc["metadata"]["name"] == "relearn-fraud":
                    assert spec["canaryTrafficPercent"] == 10
                else:
                    assert "canaryTrafficPercent" not in spec, (scenario, comp)
                assert spec["minReplicas"] >= 1 and spec["maxReplicas"] >= spec["minReplicas"]
                assert spec["scaleMetric"] and spec["scaleTarget"]


@needs_helm
def test_payload_logging_points_at_the_drift_detector() -> None:
    """Only the predictor logs: two components logging one request under one ce-id would cross."""
    (isvc,) = objects(rendered("default"), "InferenceService")
    url = "http://relearn-drift-detector.relearn.svc.cluster.local:8090/"
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["RELEARN_PREDICTOR_LOG_SINK_URL"] == url
    assert env["RELEARN_PREDICTOR_INFERENCE_SERVICE"] == "relearn-fraud"
    transformer = {e["name"] for e in isvc["spec"]["transformer"]["containers"][0]["env"]}
    assert not {name for name in transformer if "LOG_SINK" in name or "ENDPOINT" in name}, transformer
    assert "logger" not in isvc["spec"]["transformer"]
    (isvc,) = objects(rendered("default", "--set", "fraud.logger.via=kserve"), "InferenceService")
    assert isvc["spec"]["predictor"]["logger"] == {"mode": "all", "url": url}


@needs_helm
def test_logger_policy_and_log_retention_reach_the_servers_settings(monkeypatch) -> None:
    """The chart's logger and retention values arrive as the env the predictor's and the detector's settings
    read (parsed by those classes, so a renamed field fails here), and a retention limit that does not fit
    the volume is refused at render time."""
    from relearn.monitoring.settings import DriftSettings
    from relearn.serving.config import PredictorSettings

    sets = ["--set", "fraud.logger.whenFull=block", "--set-json", "driftDetector.retention.maxGiB=12.5"]
    docs = rendered("default", *sets)
    (isvc,) = objects(docs, "InferenceService")
    (detector,) = [d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("drift-detector")]
    for container in (
        isvc["spec"]["predictor"]["containers"][0],
        detector["spec"]["template"]["spec"]["containers"][0],
    ):
        for e in container["env"]:
            if "value" in e:
                monkeypatch.setenv(e["name"], e["value"])
    predictor = PredictorSettings()
    assert (predictor.log_when_full, predictor.log_queue_size, predictor.log_batch_size) == (
        "block",
        1000,
        64,
    )
    assert predictor.log_drain_seconds == 10 and predictor.log_block_seconds == 30
    drift = DriftSettings()
    assert drift.log_max_bytes == int(12.5 * 2**30) and drift.log_max_age_s == 30 * 86400
    assert drift.predictions_max_age_s == 180 * 86400 and drift.pending_ttl_s == 300
    too_big = _run([HELM, "template", "relearn", str(CHART), "--set", "driftDetector.retention.maxGiB=20"])
    assert too_big.returncode != 0 and "must be below driftDetector.storageSize (20Gi)" in too_big.stderr


@needs_helm
def test_shadow_mirror_exactly_when_enabled() -> None:
    for scenario in SCENARIOS:
        docs = rendered(scenario)
        names = {d["metadata"]["name"] for d in objects(docs, "InferenceService")}
        vss = objects(docs, "VirtualService")
        if scenario in ("shadow", "production"):
            assert names == {"relearn-fraud", "relearn-fraud-shadow"}
            (vs,) = vss
            route = vs["spec"]["http"][0]
            # The shadow is a RawDeployment: its transformer's Service answers Envoy's "<host>-shadow" Host.
            assert route["mirror"]["host"] == "relearn-fraud-shadow-transformer.relearn.svc.cluster.local"
            shadow = named(docs, "InferenceService", "relearn-fraud-shadow")
            assert shadow["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
            assert route["mirrorPercentage"]["value"] == (20 if scenario == "shadow" else 5)
            (drift,) = [d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("-detector")]
            container = drift["spec"]["template"]["spec"]["containers"][0]
            drift_env = {e["name"]: e.get("value") for e in container["env"]}
            assert drift_env["RELEARN_DRIFT_SHADOW_SERVICE"] == "relearn-fraud-shadow"
        else:
            assert names == {"relearn-fraud"} and not vss, scenario


@needs_helm
def test_kubeflow_upload_job_only_when_enabled() -> None:
    for scenario in SCENARIOS:
        jobs = objects(rendered(scenario), "Job")
        if scenario in ("kubeflow", "production"):
            (job,) = jobs
            assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
            env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert (
                env["PIPELINE_PACKAGE"] == "/opt/relearn/pipelines/relearn-train.yaml"
            )  # compiled into the image
        else:
            assert not jobs, scenario


PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())


@needs_helm
def test_production_redis_primary_persists_and_read_replicas_serve_feast_reads() -> None:
    docs, redis = rendered("production"), PRODUCTION["feast"]["redis"]
    assert redis["readReplicas"] >= 2 and redis["persistence"]["enabled"]
    primary = named(docs, "Deployment", "relearn-redis")["spec"]
    assert primary["replicas"] == 1 and primary["strategy"]["type"] == "Recreate"  # one writer on an RWO PVC
    args = primary["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (data,) = [v for v in primary["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == "relearn-redis"
    pvc = named(docs, "PersistentVolumeClaim", "relearn-redis")["spec"]
    assert pvc["resources"]["requests"]["storage"] == redis["persistence"]["size"]

    replicas = named(docs, "Deployment", "relearn-redis-replica")["spec"]
    assert replicas["replicas"] == redis["readReplicas"]
    container = replicas["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--replicaof") + 1 :][:2] == ["relearn-redis.relearn.svc.cluster.local", "6379"]
    assert "master_link_status:up" in container["readinessProbe"]["exec"]["command"][-1]  # ready once in sync
    service = named(docs, "Service", "relearn-redis-replica")["spec"]
    assert service["selector"]["app.kubernetes.io/component"] == "redis-replica"
    assert named(docs, "PodDisruptionBudget", "relearn-redis-replica")["spec"]["maxUnavailable"] == 1
    policy = named(docs, "NetworkPolicy", "relearn-redis")["spec"]
    assert policy["podSelector"]["matchExpressions"][0]["values"] == ["redis", "redis-replica"]
    peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in policy["ingress"][0]["from"]]
    # The transformers read the streaming state's Redis (tests/chart/test_chart_state.py), not Feast's.
    assert {"relearn.io/serving": "true"} not in peers
    assert any(p.get("app.kubernetes.io/component") == "redis-replica" for p in peers)  # replication
    for isvc in objects(docs, "InferenceService"):
        env = container_env(isvc["spec"]["transformer"]["containers"][0])
        assert not {k for k in env if "FEAST" in k or k == "RELEARN_REDIS_PASSWORD"}, env
    # Materialization (the KFP run pods, every pod's settings) writes to the primary.
    settings = named(docs, "ConfigMap", "relearn-settings")["data"]
    assert settings["RELEARN_FEAST_REDIS_CONNECTION"] == "relearn-redis.relearn.svc.cluster.local:6379"

    # The default: one primary, no replicas, no PVC.
    default = rendered("default")
    assert not [d for d in default if "redis-replica" in d["metadata"]["name"]]
    assert "relearn-redis" not in {d["metadata"]["name"] for d in objects(default, "PersistentVolumeClaim")}


@needs_helm
def test_production_mlflow_on_postgres_with_an_object_store() -> None:
    docs, mlflow = rendered("production"), PRODUCTION["mlflow"]
    deployment = named(docs, "Deployment", "relearn-mlflow")["spec"]
    assert deployment["replicas"] == mlflow["replicas"] >= 2
    assert deployment.get("strategy", {}).get("type") != "Recreate"  # stateless: rolling updates
    container = deployment["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    # psycopg2 named: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which the image lacks. No
    # credentials in argv (/proc/<pid>/cmdline is world-readable): libpq reads PGUSER/PGPASSWORD.
    assert args["backend-store-uri"] == "postgresql+psycopg2://relearn-postgres:5432/mlflow"
    assert "PGPASSWORD" not in " ".join(container["args"])
    assert args["artifacts-destination"] == mlflow["artifacts"]["s3Uri"]
    assert args["artifacts-destination"].startswith("s3://") and "--serve-artifacts" in container["args"]
    env = container_env(container)
    secret = mlflow["artifacts"]["s3ExistingSecret"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": secret, "key": key}}
    for key in ("PGUSER", "PGPASSWORD"):
        assert env[key]["secretKeyRef"]["name"] == "relearn-mlflow-postgres"
    assert env.get("MLFLOW_S3_ENDPOINT_URL") == mlflow["artifacts"].get("s3EndpointUrl")
    assert not [d for d in objects(docs, "PersistentVolumeClaim") if "artifacts" in d["metadata"]["name"]]
    assert objects(docs, "StatefulSet")[0]["metadata"]["name"] == "relearn-postgres"
    # Every pod reaches MLflow through its Service, never the database.
    settings = named(docs, "ConfigMap", "relearn-settings")["data"]
    assert settings["RELEARN_MLFLOW_TRACKING_URI"] == "http://relearn-mlflow.relearn.svc.cluster.local:5000"


@needs_helm
def test_production_serving_autoscales_and_drift_keeps_its_volume() -> None:
    docs, fraud = rendered("production"), PRODUCTION["fraud"]
    for isvc in objects(docs, "InferenceService"):
        raw = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        for comp in ("predictor", "transformer"):
            spec, want = isvc["spec"][comp], fraud[comp]
            assert spec["minReplicas"] == want["minReplicas"] >= 2, comp  # no single point of failure
            assert spec["maxReplicas"] == want["maxReplicas"] > spec["minReplicas"], comp
            # A raw (shadow) InferenceService scales with an HPA, which knows cpu and memory only.
            scaling = ("cpu", 80) if raw else (want["scaleMetric"], want["scaleTarget"])
            assert (spec["scaleMetric"], spec["scaleTarget"]) == scaling
            assert spec["containers"][0]["resources"] == want["resources"], comp
    # The transformer is the expensive hop (state update and read, feature code): it gets the wider range.
    assert fraud["transformer"]["maxReplicas"] > fraud["predictor"]["maxReplicas"]

    drift = PRODUCTION["driftDetector"]
    deployment = named(docs, "Deployment", "relearn-drift-detector")["spec"]
    # One SQLite writer on a ReadWriteOnce volume.
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    (data,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == "relearn-drift-detector"
    container = pod["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert container_env(container)["RELEARN_DRIFT_DATA_DIR"] == "/data"
    assert container["resources"] == drift["resources"]
    pvc = named(docs, "PersistentVolumeClaim", "relearn-drift-detector")
    assert pvc["spec"]["resources"]["requests"]["storage"] == drift["storageSize"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # survives helm uninstall


@needs_helm
def test_secrets_are_never_values() -> None:
    for scenario in SCENARIOS:
        docs = rendered(scenario)
        assert not objects(docs, "Secret")
        text = rendered_text(scenario)
        assert "password:" not in text.lower().replace("passwordkey", "")


@needs_helm
def test_prometheus_rules_check_and_unit_tests(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    if promtool is None:
        pytest.skip("promtool missing: run .ci/install-tools.sh (Debian prometheus)")
    (rule,) = objects(rendered("default"), "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "RelearnDriftDetected",
        "RelearnModelQualityDrop",
        "RelearnLatencySLO",
        "RelearnHighErrorRate",
        "RelearnCanaryUnhealthy",
        "RelearnPayloadLoggerDrops",
    } <= alerts
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert "relearn_" in r["expr"], r["alert"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(CHART / "tests" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    out = _run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run([promtool, "test", "rules", "alerts.test.yaml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(yaml.safe_load((CHART / "tests" / "alerts.test.yaml").read_text()).__str__().split("'"))
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"


@needs_helm
def test_grafana_dashboard_uses_relearn_metrics() -> None:
    (cm,) = [
        d for d in objects(rendered("default"), "ConfigMap") if d["metadata"]["name"].endswith("dashboard")
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["relearn.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all("relearn_" in e for e in exprs)


@needs_helm
def test_yamllint_rendered(tmp_path: Path) -> None:
    yamllint = _tool("yamllint")
    if yamllint is None:
        pytest.skip("yamllint missing: run .ci/install-tools.sh")
    config = json.dumps(
        {
            "extends": "default",
            "rules": {
                "line-length": {"max": 200},
                "document-start": "disable",
                "indentation": {"indent-sequences": "whatever"},
                "comments": {"min-spaces-from-content": 1},
            },
        }
    )
    files = []
    for scenario in SCENARIOS:
        f = tmp_path / f"{scenario}.yaml"
        f.write_text(rendered_text(scenario))
        files.append(str(f))
    out = _run([yamllint, "-f", "parsable", "-d", config, *files, str(ROOT / "skaffold.yaml")])
    assert out.returncode == 0, out.stdout + out.stderr


@needs_shared
@needs_jsonschema
def test_skaffold_config_valid() -> None:
    schema = json.loads((SHARED / "schemas" / "skaffold-v4beta14.json").read_text())
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, errors
    assert config["apiVersion"] == "skaffold/v4beta14"
    images = {a["image"]: a["docker"]["dockerfile"] for a in config["build"]["artifacts"]}
    assert images == {
        "relearn-pipeline": "components/Dockerfile",
        "relearn-predictor": "services/predictor/Dockerfile",
        "relearn-transformer": "services/transformer/Dockerfile",
        "relearn-drift-detector": "services/drift-detector/Dockerfile",
        "relearn-rollout": "services/rollout/Dockerfile",
    }
    templates = config["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["images"]
    for key in templates:
        _, image, field = key.split(".")
        assert field in values[image], key
    assert {p["name"] for p in config["profiles"]} == {"dev", "prod"}
    # A typo in skaffold.yaml fails too.
    bad = copy.deepcopy(config)
    bad["build"]["artifacts"][0]["dockerfil"] = "x"
    assert list(validator.iter_errors(bad))


@needs_helm
def test_checkov_rendered_chart(tmp_path: Path) -> None:
    """checkov (kubernetes) on every scenario: zero failed checks; each skip has a reason at the resource."""
    checkov = _tool("checkov")
    if checkov is None:
        pytest.skip("checkov missing: run .ci/install-tools.sh")
    for scenario in SCENARIOS:
        (tmp_path / f"{scenario}.yaml").write_text(rendered_text(scenario))
    env = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet"], env=env)
    report = json.loads(out.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0, out.stdout[-4000:]
    for doc in yaml.safe_load_all("\n---\n".join(rendered_text(s) for s in SCENARIOS)):
        for key, reason in ((doc or {}).get("metadata", {}).get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert "=" in reason and len(reason.split("=", 1)[1]) > 20, (key, reason)


DOCKERFILES = sorted(p for p in ROOT.glob("**/Dockerfile") if ".venv" not in p.parts)


def test_dockerfiles_hadolint_and_checkov(tmp_path: Path) -> None:
    """Every image: hadolint clean, and checkov (dockerfile) with zero failed checks; skips carry a reason."""
    assert len(DOCKERFILES) >= 3, DOCKERFILES
    hadolint = _tool("hadolint", ROOT / ".venv" / "platform" / "bin")
    checkov = _tool("checkov")
    if hadolint is None or checkov is None:
        pytest.skip("hadolint or checkov missing: run make setup")
    lint = _run([hadolint, *map(str, DOCKERFILES)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    env = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    files = [arg for path in DOCKERFILES for arg in ("-f", str(path))]
    out = _run([checkov, *files, "--framework", "dockerfile", "-o", "json", "--quiet"], env=env)
    report = json.loads(out.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0, out.stdout[-4000:]
    for path in DOCKERFILES:
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert len(line.split(":", 2)[-1].strip()) > 20, (path, line)
