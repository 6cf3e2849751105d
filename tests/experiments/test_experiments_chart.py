"""Experiments in the chart: one predictor InferenceService per arm, the experiment router (an Istio
VirtualService on x-relearn-arm, where the local rollout router sits), the store the transformer mounts,
and a least-privilege Role. Custom resources are validated against the upstream CRDs (closed schemas)."""

from __future__ import annotations

import copy

import pytest
import yaml

from relearn.experiments.routing import ARM_HEADER
from relearn.serving.config import TransformerSettings
from support.chart import HELM, K8S_VERSION, NAMESPACE, _run, _tool, needs_helm, objects, rendered
from support.crds import CRDS, crd_errors

ON = ("--set", "experiments.enabled=true", "--set", "experiments.versions={7,8}")
# One render for every test here (helm costs ~1.5 s a run): arms, the shadow, and one operator.
ALL = (
    *ON,
    "--set",
    "shadow.enabled=true",
    "--set-json",
    'experiments.operators=[{"kind": "User", "name": "alice"}]',
)
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"{CRDS} missing (upstream CRDs)")


def _docs() -> list[dict]:
    return rendered("default", *ALL)


def _named(kind: str, name: str) -> dict:
    (doc,) = [d for d in objects(_docs(), kind) if d["metadata"]["name"] == name]
    return doc


@needs_helm
def test_nothing_rendered_unless_enabled() -> None:
    docs = rendered("default")
    assert not [d for d in docs if "experiment" in d["metadata"]["name"] or "-arm-" in d["metadata"]["name"]]
    (fraud,) = [d for d in objects(docs, "InferenceService") if d["metadata"]["name"] == "relearn-fraud"]
    env = {e["name"] for e in fraud["spec"]["transformer"]["containers"][0]["env"]}
    assert not {"RELEARN_EXPERIMENT_STORE", "RELEARN_TRANSFORMER_EXPERIMENT_HOST"} & env


@needs_helm
@needs_crds
def test_each_arm_has_its_own_predictor_and_a_route_on_the_arm_header() -> None:
    arms = {
        d["metadata"]["annotations"]["relearn.io/model-version"]: d
        for d in objects(_docs(), "InferenceService")
        if "-arm-" in d["metadata"]["name"]
    }
    assert sorted(arms) == ["7", "8"]
    for version, isvc in arms.items():
        assert not crd_errors(isvc), crd_errors(isvc)
        assert set(isvc["spec"]) == {"predictor"}, "the fraud transformer calls the arms' predictors"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        (container,) = isvc["spec"]["predictor"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RELEARN_PREDICTOR_MODEL_URI"] == f"models:/relearn-fraud/{version}"
        assert env["RELEARN_PREDICTOR_INFERENCE_SERVICE"] == f"relearn-fraud-arm-{version}"
        assert isvc["spec"]["predictor"]["labels"]["relearn.io/serving"] == "true"  # the serving policy
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["capabilities"]["drop"] == ["ALL"]
    vs = _named("VirtualService", "relearn-experiment-router")
    assert not crd_errors(vs), crd_errors(vs)
    assert vs["spec"]["gateways"] == ["mesh"]
    (host,) = vs["spec"]["hosts"]
    *arm_routes, fallback = vs["spec"]["http"]
    for route, version in zip(arm_routes, ("7", "8"), strict=True):
        ((header, match),) = route["match"][0]["headers"].items()
        assert header == ARM_HEADER
        assert match == {"regex": f"^v?{version}$"}  # "7" and "v7" both name version 7
        (dest,) = route["route"]
        assert dest["destination"] == {
            "host": f"relearn-fraud-arm-{version}-predictor.{NAMESPACE}.svc.cluster.local",
            "port": {"number": 80},
        }
    assert fallback["directResponse"]["status"] == 503 and "match" not in fallback, "never a silent route"
    service = _named("Service", "relearn-fraud-experiment")
    assert host == f"relearn-fraud-experiment.{NAMESPACE}.svc.cluster.local"
    assert "selector" not in service["spec"] and service["spec"]["ports"][0]["port"] == 80
    typo = copy.deepcopy(vs)
    typo["spec"]["http"][0]["match"][0]["header"] = typo["spec"]["http"][0]["match"][0].pop("headers")
    assert any("header" in e for e in crd_errors(typo)), "the closed CRD schema catches a typo"


@needs_helm
def test_fraud_transformer_mounts_the_store_and_sends_marked_calls_to_the_router(monkeypatch) -> None:
    fraud = _named("InferenceService", "relearn-fraud")
    transformer = fraud["spec"]["transformer"]
    (container,) = transformer["containers"]
    env = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "experiments"]
    assert mount["readOnly"] is True
    assert env["RELEARN_EXPERIMENT_STORE"] == f"{mount['mountPath']}/experiments.json"
    (volume,) = [v for v in transformer["volumes"] if v["name"] == "experiments"]
    configmap = _named("ConfigMap", volume["configMap"]["name"])
    assert configmap["data"] == {"experiments.json": "{}"}, "an empty store: no experiment running"
    monkeypatch.setenv("RELEARN_TRANSFORMER_EXPERIMENT_HOST", env["RELEARN_TRANSFORMER_EXPERIMENT_HOST"])
    host = TransformerSettings().experiment_host
    assert host == f"relearn-fraud-experiment.{NAMESPACE}.svc.cluster.local:80"
    assert "experiments" not in {v["name"] for v in fraud["spec"]["predictor"]["volumes"]}
    shadow = _named("InferenceService", "relearn-fraud-shadow")
    shadow_env = {e["name"] for e in shadow["spec"]["transformer"]["containers"][0]["env"]}
    assert "RELEARN_TRANSFORMER_EXPERIMENT_HOST" not in shadow_env, "mirrored traffic is not an arm's"


@needs_helm
def test_experiments_role_is_least_privilege() -> None:
    docs = _docs()
    (role,) = [r for r in objects(docs, "Role") if r["metadata"]["name"] == "relearn-experiments"]
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["resourceNames"])): sorted(r["verbs"])
        for r in role["rules"]
    }
    assert rules == {
        (("",), ("configmaps",), ("relearn-fraud-experiments",)): ["get", "patch"],
        (("networking.istio.io",), ("virtualservices",), ("relearn-experiment-router",)): ["get"],
        (("serving.kserve.io",), ("inferenceservices",), ("relearn-fraud",)): ["get", "patch"],
    }
    (binding,) = [b for b in objects(docs, "RoleBinding") if b["metadata"]["name"] == "relearn-experiments"]
    assert binding["subjects"] == [{"kind": "User", "name": "alice"}]
    assert binding["roleRef"]["name"] == "relearn-experiments"


@needs_helm
def test_values_schema_refuses_bad_experiment_values() -> None:
    out = _run(
        [HELM, "template", "relearn", "charts/relearn", "-n", NAMESPACE, "--set", "experiments.versions={v7}"]
    )
    assert out.returncode != 0 and "/experiments/versions/0" in out.stderr, out.stderr


BANDIT = "relearn-bandit-update"


def bandit_update_argv(docs: list[dict]) -> list[str]:
    """The command line the kubelet runs for the rendered bandit-update CronJob (command + args)."""
    (cron,) = [d for d in objects(docs, "CronJob") if d["metadata"]["name"] == BANDIT]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return [*container["command"], *container["args"]]


@needs_helm
def test_bandit_update_cronjob_runs_the_cli_on_the_detector_under_its_own_role(tmp_path) -> None:
    from relearn.experiments.cli import parse

    docs = _docs()
    (cron,) = [d for d in objects(docs, "CronJob") if d["metadata"]["name"] == BANDIT]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"] == "17 * * * *"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # The command is the experiments CLI's: it parses, names the update, the store and the detector.
    argv = bandit_update_argv(docs)
    assert argv[:3] == ["python", "-m", "relearn.experiments"]
    args = parse(argv[3:])
    (drift,) = [s for s in objects(docs, "Service") if s["metadata"]["name"] == "relearn-drift-detector"]
    port = drift["spec"]["ports"][0]["port"]
    update = args.update_bandit
    assert update is not None and (update.name, update.history) == (None, None)
    assert update.detector == f"http://relearn-drift-detector.{NAMESPACE}.svc.cluster.local:{port}/"
    assert args.configmap == f"{NAMESPACE}/relearn-fraud-experiments"
    assert _named("ConfigMap", "relearn-fraud-experiments")["metadata"]["namespace"] == NAMESPACE
    # Its own identity, token mounted in this pod only, allowed get and patch on the store and nothing else.
    sa = _named("ServiceAccount", BANDIT)
    assert pod["serviceAccountName"] == BANDIT and pod["automountServiceAccountToken"] is True
    assert sa["automountServiceAccountToken"] is False
    role, binding = _named("Role", BANDIT), _named("RoleBinding", BANDIT)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["relearn-fraud-experiments"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"]["name"] == BANDIT
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": BANDIT, "namespace": NAMESPACE}]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "the audit trail's folder"
    # Strict Kubernetes schemas for the four objects (the chart's scenarios do not render them).
    validate = _tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate missing: run .ci/install-tools.sh")
    files = []
    for doc in (cron, sa, role, binding):
        files.append(tmp_path / f"{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    out = _run([validate, "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)])
    assert out.returncode == 0 and "ERROR" not in out.stdout, out.stdout + out.stderr
    broken = copy.deepcopy(cron)
    broken["spec"]["concurrencyPolicyy"] = broken["spec"].pop("concurrencyPolicy")
    files[0].write_text(yaml.safe_dump(broken))
    assert _run([validate, "--strict", "--quiet", "-k", K8S_VERSION, str(files[0])]).returncode != 0


@needs_helm
def test_no_bandit_update_without_the_detector_or_when_off() -> None:
    for off in ("experiments.bandit.enabled=false", "driftDetector.enabled=false"):
        docs = rendered("default", *ON, "--set", off)
        assert not [d for d in docs if d["metadata"]["name"] == BANDIT], off
    out = _run(
        [HELM, "template", "relearn", "charts/relearn", *ON, "--set", "experiments.bandit.schedule=hourly"]
    )
    assert out.returncode != 0 and "/experiments/bandit/schedule" in out.stderr, out.stderr


@needs_helm
def test_bandit_update_objects_pass_checkov(tmp_path) -> None:
    """checkov (kubernetes) on the CronJob and its RBAC, which the chart's scenarios do not render."""
    import json

    checkov = _tool("checkov")
    if checkov is None:
        pytest.skip("checkov missing: run .ci/install-tools.sh")
    docs = [d for d in _docs() if d["metadata"]["name"] == BANDIT]
    assert sorted(d["kind"] for d in docs) == ["CronJob", "Role", "RoleBinding", "ServiceAccount"]
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump_all(docs))
    env = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet"], env=env)
    report = json.loads(out.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0 and summary["resource_count"] == 4, out.stdout[-4000:]
