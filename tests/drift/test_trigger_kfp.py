"""Cluster-mode retraining: the exact KFP API calls the trigger makes.

No KFP API server can run here, so a small real HTTP server on loopback plays it and records every
request (tests/drift/kfp_stand_in.py); the trigger uses the real ``kfp.Client`` against it.
"""

from __future__ import annotations

import pytest
from kfp_stand_in import KfpApi, kfp_stand_in

from pipelines.compile import compile_all
from relearn.monitoring.settings import DriftSettings
from relearn.monitoring.trigger import recalibrate_action, submit_kfp_run


@pytest.fixture
def kfp_api():
    with kfp_stand_in() as host:
        yield host, KfpApi.calls


def test_cluster_trigger_submits_the_compiled_pipeline_through_the_kfp_api(kfp_api, tmp_path):
    host, calls = kfp_api
    (package,) = (p for p in compile_all(tmp_path) if p.stem == "relearn-train")

    run_id = submit_kfp_run(host, str(package), {"days": 14, "scenario": "none"})

    assert run_id == "run-42"
    methods_paths = [(method, path.split("?")[0]) for method, path, _ in calls]
    assert methods_paths == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    run = calls[-1][2]
    assert run["experiment_id"] == "exp-1"
    assert run["display_name"] == "relearn-retrain (drift)"
    # With a kfp-kubernetes platform spec the client sends {pipeline_spec, platform_spec}: the run pods get
    # the cluster's settings ConfigMap (pipelines/train.py), not a pod-local MLflow.
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "relearn-train"
    kubernetes = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    executors = kubernetes["deploymentSpec"]["executors"]
    assert all(e["configMapAsEnv"][0]["configMapName"] == "relearn-pipeline-env" for e in executors.values())
    assert run["runtime_config"]["parameters"] == {"days": 14, "scenario": "none"}


def test_a_prior_shift_in_cluster_mode_runs_the_recalibration_pipeline_reading_this_detector(
    kfp_api, tmp_path
):
    """The response ``recalibrate`` (relearn.monitoring.response) in a cluster: one KFP run of the compiled
    relearn-recalibrate pipeline (recalibrate → deploy, both wired to the release's settings), told where to
    read the labelled rows back (this detector's service URL) and with this detector's label maturity."""
    host, calls = kfp_api
    (package,) = (p for p in compile_all(tmp_path) if p.stem == "relearn-recalibrate")
    detector = "http://relearn-drift-detector.fraud.svc.cluster.local:8090/"
    options = {"trigger_mode": "cluster", "kfp_host": host, "data_dir": tmp_path}
    options |= {"recalibrate_package": str(package), "service_url": detector, "label_maturity_s": 86400.0}
    settings = DriftSettings(**options)

    recalibrate_action(settings)({"kind": "quality", "response": "recalibrate"})

    (run,) = [body for method, path, body in calls if (method, path) == ("POST", "/apis/v2beta1/runs")]
    assert run["display_name"] == "relearn-recalibrate (quality)"
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "relearn-recalibrate"
    assert set(spec["root"]["dag"]["tasks"]) == {"recalibrate", "deploy"}
    kubernetes = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    executors = kubernetes["deploymentSpec"]["executors"]
    assert len(executors) == 2
    assert all(e["configMapAsEnv"][0]["configMapName"] == "relearn-pipeline-env" for e in executors.values())
    assert run["runtime_config"]["parameters"] == {"detector_url": detector, "maturity_seconds": 86400.0}


def test_without_its_service_url_a_cluster_detector_starts_no_recalibration(kfp_api, tmp_path):
    host, calls = kfp_api
    settings = DriftSettings(trigger_mode="cluster", kfp_host=host, data_dir=tmp_path)
    assert recalibrate_action(settings) is None and calls == []


def test_a_covariate_drift_retrain_in_cluster_mode_fine_tunes_the_champion(kfp_api, tmp_path):
    """The incident's train_mode (relearn.monitoring.response: covariate drift → auto) is the run's
    ``train_mode`` parameter, a parameter of the compiled training pipeline; a schedule sets none."""
    from relearn.monitoring.trigger import retrain_action

    host, calls = kfp_api
    (package,) = (p for p in compile_all(tmp_path) if p.stem == "relearn-train")
    options = {"trigger_mode": "cluster", "kfp_host": host, "kfp_package": str(package)}
    settings = DriftSettings(**options, data_dir=tmp_path)
    action = retrain_action(settings)
    assert action is not None

    action({"kind": "drift", "response": "retrain", "train_mode": "auto"})
    action({"kind": "schedule", "response": "retrain"})

    runs = [body for method, path, body in calls if (method, path) == ("POST", "/apis/v2beta1/runs")]
    assert [r["runtime_config"]["parameters"] for r in runs] == [{"train_mode": "auto"}, {}]
    inputs = runs[0]["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert inputs["train_mode"]["defaultValue"] == "scratch"
