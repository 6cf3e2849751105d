"""The chart's retraining triggers (driftDetector.retraining): what the detector's settings read, and
impossible values refused at render time naming the value."""

from __future__ import annotations

import pytest

from support.chart import CHART, HELM, NAMESPACE, _run, container_env, needs_helm, objects, rendered


@needs_helm
def test_schedule_and_volume_reach_the_detectors_settings(monkeypatch) -> None:
    from relearn.monitoring.settings import DriftSettings

    sets = ["--set", "driftDetector.retraining.scheduleSeconds=86400"]
    sets += ["--set", "driftDetector.retraining.volumeLabels=5000"]
    docs = rendered("kubeflow", *sets)
    (detector,) = [d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("drift-detector")]
    env = container_env(detector["spec"]["template"]["spec"]["containers"][0])
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    drift = DriftSettings()
    assert (drift.schedule_interval_s, drift.volume_labels, drift.trigger_mode) == (86400, 5000, "cluster")
    default = container_env(
        next(
            d
            for d in objects(rendered("default"), "Deployment")
            if d["metadata"]["name"].endswith("drift-detector")
        )["spec"]["template"]["spec"]["containers"][0]
    )
    assert "RELEARN_DRIFT_SCHEDULE_INTERVAL_S" not in default and "RELEARN_DRIFT_VOLUME_LABELS" not in default


@needs_helm
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("scheduleSeconds=600", "driftDetector.retraining.scheduleSeconds (600) must be at least"),
        ("scheduleSeconds=30", "/driftDetector/retraining/scheduleSeconds': minimum: got 30, want 60"),
        ("volumeLabels=0", "/driftDetector/retraining/volumeLabels': minimum: got 0, want 1"),
    ],
)
def test_impossible_trigger_values_are_refused_by_name(value: str, message: str) -> None:
    cmd = [
        HELM,
        "template",
        "relearn",
        str(CHART),
        "-n",
        NAMESPACE,
        "--set",
        f"driftDetector.retraining.{value}",
    ]
    out = _run(cmd)
    assert out.returncode != 0 and message in out.stderr, out.stderr


@needs_helm
def test_a_cluster_detector_can_start_a_recalibration_that_reads_it_back(monkeypatch) -> None:
    """Prior shift in a cluster (pipelines/recalibrate.py): the detector knows its own Service URL for the
    run's recalibrate step, and its NetworkPolicy admits the KFP run pods to that port."""
    from rehearsal.netpol import Pod, allowed
    from relearn.monitoring.settings import DriftSettings
    from relearn.monitoring.trigger import recalibrate_action

    docs = rendered("kubeflow")
    (detector,) = [d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("drift-detector")]
    for name, value in container_env(detector["spec"]["template"]["spec"]["containers"][0]).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    drift = DriftSettings()
    (service,) = [s for s in objects(docs, "Service") if s["metadata"]["name"].endswith("drift-detector")]
    (port,) = [p["port"] for p in service["spec"]["ports"]]
    host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert drift.service_url == f"http://{host}:{port}/" and recalibrate_action(drift) is not None
    pod = Pod(NAMESPACE, detector["spec"]["template"]["metadata"]["labels"])
    assert allowed(docs, Pod("kubeflow", {}), pod, drift.port)  # kubeflow.runNamespace's default
    assert not allowed(docs, Pod("elsewhere", {}), pod, drift.port)


@needs_helm
def test_the_schedule_runner_reaches_the_detector_and_defaults_to_its_own_clock(monkeypatch) -> None:
    from relearn.monitoring.settings import DriftSettings

    for runner in ("detector", "kfp"):
        sets = ["--set", "driftDetector.retraining.scheduleSeconds=86400"]
        if runner == "kfp":
            sets += ["--set", "driftDetector.retraining.scheduleRunner=kfp"]
        docs = rendered("kubeflow", *sets)
        (detector,) = [
            d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("drift-detector")
        ]
        for name, value in container_env(detector["spec"]["template"]["spec"]["containers"][0]).items():
            if isinstance(value, str):
                monkeypatch.setenv(name, value)
        assert DriftSettings().schedule_runner == runner
    out = _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, "--set",
                "driftDetector.retraining.scheduleRunner=cron"])  # fmt: skip
    assert out.returncode != 0 and "scheduleRunner" in out.stderr
