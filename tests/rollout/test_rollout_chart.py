"""The rollout controller's wiring in the chart: it reads the shadow comparison from the drift detector."""

from __future__ import annotations

from pathlib import PurePosixPath

from relearn.rollout.controller import ControllerSettings
from support.chart import needs_helm, objects, rendered

DETECTOR_URL = "http://relearn-drift-detector.relearn.svc.cluster.local:8090/"


def _controller_env(*extra: str) -> dict[str, str | None]:
    (deployment,) = [
        d for d in objects(rendered("shadow", *extra), "Deployment") if "rollout" in d["metadata"]["name"]
    ]
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@needs_helm
def test_controller_reads_the_shadow_comparison_from_the_detector_service(monkeypatch) -> None:
    env = _controller_env()
    assert env["RELEARN_ROLLOUT_DETECTOR_URL"] == DETECTOR_URL
    (service,) = [
        s for s in objects(rendered("shadow"), "Service") if s["metadata"]["name"] == "relearn-drift-detector"
    ]
    assert [p["port"] for p in service["spec"]["ports"]] == [8090]
    monkeypatch.setenv("RELEARN_ROLLOUT_DETECTOR_URL", env["RELEARN_ROLLOUT_DETECTOR_URL"])
    assert ControllerSettings().detector_url == DETECTOR_URL, "the variable is the controller's setting"


@needs_helm
def test_no_detector_no_detector_url() -> None:
    assert "RELEARN_ROLLOUT_DETECTOR_URL" not in _controller_env("--set", "driftDetector.enabled=false")


def _rollout(*extra: str) -> tuple[dict, list[dict]]:
    """The controller Deployment and the PVCs rendered with the default values plus ``extra``."""
    docs = rendered("default", *extra)
    (deployment,) = [d for d in objects(docs, "Deployment") if "rollout" in d["metadata"]["name"]]
    return deployment, objects(docs, "PersistentVolumeClaim")


def _audit_volume(deployment: dict, monkeypatch) -> dict:
    """The volume holding the file the controller appends its audit trail to (its own settings decide)."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for var in container["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    audit = ControllerSettings().audit_log
    assert audit is not None, "RELEARN_ROLLOUT_AUDIT_LOG unset: the trail goes to RELEARN_HOME (/tmp)"
    mounts = [
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) in PurePosixPath(audit).parents
    ]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount holds the file
    assert not mount.get("readOnly")
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


@needs_helm
def test_audit_trail_survives_a_controller_restart_on_its_pvc(monkeypatch) -> None:
    deployment, claims = _rollout()
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "RWO: the old pod lets go first"
    volume = _audit_volume(deployment, monkeypatch)
    assert "emptyDir" not in volume, "an emptyDir dies with the pod"
    (claim,) = [c for c in claims if c["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"], "the cluster's default class"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    deployment, claims = _rollout(
        "--set", "rollout.persistence.size=3Gi,rollout.persistence.storageClass=ssd"
    )
    (claim,) = [c for c in claims if "rollout" in c["metadata"]["name"]]
    assert claim["spec"]["storageClassName"] == "ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi"


@needs_helm
def test_audit_trail_without_persistence_keeps_the_emptydir(monkeypatch) -> None:
    deployment, claims = _rollout("--set", "rollout.persistence.enabled=false")
    assert [c for c in claims if "rollout" in c["metadata"]["name"]] == []
    assert "emptyDir" in _audit_volume(deployment, monkeypatch)
    docs = rendered("default", "--set", "rollout.enabled=false")
    assert [d for d in docs if "rollout" in d["metadata"]["name"]] == [], "no controller, no claim"
