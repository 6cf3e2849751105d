"""Cluster-mode retraining: the exact KFP API calls the trigger makes.

No KFP API server can run here, so a small real HTTP server on loopback plays it and records every
request; the trigger uses the real ``kfp.Client`` against it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from pipelines.compile import compile_all
from relearn.monitoring.trigger import submit_kfp_run


class _KfpApi(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, str, dict]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.calls.append((self.command, self.path, body))
        reply: dict = {}
        if self.path.startswith("/apis/v2beta1/experiments"):
            reply = {"experiments": []} if self.command == "GET" else {"experiment_id": "exp-1"}
        elif self.path == "/apis/v2beta1/runs":
            reply = {"run_id": "run-42", "display_name": body.get("display_name")}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 (http.server's names)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_api():
    _KfpApi.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _KfpApi.calls
    server.shutdown()
    thread.join(timeout=5)


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
