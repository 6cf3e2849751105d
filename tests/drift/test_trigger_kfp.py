"""Cluster-mode retraining: the exact KFP API calls the trigger makes.

No KFP API server can run here, so a small real HTTP server on loopback plays it and records every
request (tests/drift/kfp_stand_in.py); the trigger uses the real ``kfp.Client`` against it.
"""

from __future__ import annotations

import pytest
from kfp_stand_in import KfpApi, kfp_stand_in

from pipelines.compile import compile_all
from relearn.monitoring.trigger import submit_kfp_run


@pytest.fixture
def kfp_api():
    with kfp_stand_in() as host:
        yield host, KfpApi.calls


def test_cluster_trigger_submits_the_compiled_pipeline_through_the_kfp_api(kfp_api, tmp_path):
    host, calls = kfp_api
    (package,) = compile_all(tmp_path)

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
