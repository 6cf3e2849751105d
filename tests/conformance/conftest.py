"""The conformance suite's servers, started once per session on 127.0.0.1.

predictor (the tiny model v1 of :func:`rollout_stack.make_artifacts`), transformer (SQLite streaming state,
the predictor over gRPC), rollout router (the predictor as its stable version) and drift detector (its own
environment, a reference scored by the same model). They start together and are waited for together.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from conformance.cases import MODEL, model_arrays, transactions
from conformance.clients import Client, all_clients
from conformance.table import outcome, render
from relearn.rollout.local_backend import LocalBackend
from support.rollout_stack import DRIFT_PYTHON, Pool, make_artifacts
from support.serving_stack import PYTHON, Server, free_port, stop_process, wait_until


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tag each report with its table cell (the test module's ``cell(test, params)``)."""
    report = (yield).get_result()
    cell = getattr(item.module, "cell", None)
    if cell is not None and hasattr(item, "callspec"):
        report.user_properties.append(("conformance", cell(item.originalname, item.callspec.params)))


def pytest_terminal_summary(terminalreporter):
    """The conformance table of this run (README.md, serving section, is a copy)."""
    results = [
        (dict(r.user_properties)["conformance"], verdict)
        for reports in terminalreporter.stats.values()
        for r in reports
        if "conformance" in dict(getattr(r, "user_properties", ())) and (verdict := outcome(r))
    ]
    if results:
        terminalreporter.write_sep("-", "conformance: client × route × endpoint")
        terminalreporter.write_line(render(results))


@dataclass
class Endpoint:
    """One server under test: its REST base URL, its gRPC target (None: REST only) and its process."""

    name: str
    url: str
    grpc: str | None
    log_path: Path
    process: subprocess.Popen

    def wait_ready(self, path: str, timeout: float = 120.0) -> None:
        ready = lambda: httpx.get(self.url + path, timeout=1).status_code == 200  # noqa: E731
        wait_until(self.name, ready, self.process, self.log_path, timeout, errors=(httpx.HTTPError,))


def _spawn(name: str, cmd: list[str], env: dict[str, str], tmp: Path, url: str, grpc: str | None) -> Endpoint:
    log_path = tmp / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    return Endpoint(name, url, grpc, log_path, process)


def _as_endpoint(server: Server, name: str) -> Endpoint:
    assert server.process is not None
    return Endpoint(name, server.url, server.grpc_target, server.log_path, server.process)


@pytest.fixture(scope="session")
def artifact(tmp_path_factory) -> Path:
    """The tiny model every server loads (version 1 of make_artifacts)."""
    return make_artifacts(tmp_path_factory.mktemp("models"))["1"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory, artifact) -> Iterator[dict[str, Endpoint]]:
    """``predictor``, ``transformer``, ``router`` and ``detector``, ready; stopped at the session's end."""
    tmp = tmp_path_factory.mktemp("conformance")
    home = {"RELEARN_HOME": str(tmp / "home")}
    predictor = Server(
        "relearn.serving.predictor",
        ["--model-uri", str(artifact), "--model-version", "1"],
        home,
        tmp / "predictor.log",
    )
    transformer = Server(
        "relearn.serving.transformer",
        ["--predictor-host", predictor.grpc_target],
        {**home, "RELEARN_STATE_PATH": str(tmp / "state.sqlite3")},
        tmp / "transformer.log",
    )
    state = tmp / "rollout-state.json"
    LocalBackend(state).register("1", rest=predictor.url, grpc=predictor.grpc_target)
    rest, grpc_port = free_port(), free_port()
    router_cmd = [PYTHON, "-m", "relearn.rollout.router", "--state", str(state)]
    router_cmd += ["--rest-port", str(rest), "--grpc-port", str(grpc_port)]
    port = free_port()
    detector_env = {
        "RELEARN_DRIFT_HOST": "127.0.0.1",
        "RELEARN_DRIFT_PORT": str(port),
        "RELEARN_DRIFT_DATA_DIR": str(tmp / "drift"),
        "RELEARN_DRIFT_REFERENCE_PATH": str(tmp / "reference.parquet"),
        "RELEARN_DRIFT_REPORTS": "false",
    }
    endpoints: dict[str, Endpoint] = {}
    try:
        endpoints["predictor"] = _as_endpoint(predictor.start(), "predictor")
        endpoints["transformer"] = _as_endpoint(transformer.start(), "transformer")
        endpoints["router"] = _spawn(
            "router", router_cmd, home, tmp, f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"
        )
        Pool.scored_by(artifact, n=300).reference(tmp / "reference.parquet")  # while the others start
        detector_cmd = [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server"]
        endpoints["detector"] = _spawn(
            "detector", detector_cmd, detector_env, tmp, f"http://127.0.0.1:{port}", None
        )
        for name, endpoint in endpoints.items():
            endpoint.wait_ready("/ready" if name == "detector" else "/v2/health/ready")
        yield endpoints
    finally:
        for endpoint in endpoints.values():  # terminate all first: they shut down in parallel
            if endpoint.process.poll() is None:
                endpoint.process.terminate()
        for endpoint in endpoints.values():
            stop_process(endpoint.process)
        predictor.stop()  # closes its log
        transformer.stop()


@pytest.fixture(scope="session")
def clients() -> Iterator[dict[str, Client]]:
    """Every client by name; tritonclient.grpc's calls go to one spawned worker process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield {client.name: client for client in all_clients(executor)}


@pytest.fixture(scope="session")
def expected_scores(stack, artifact) -> dict[str, np.ndarray]:
    """The scores each contract must give: the predictor's from the model itself (in process), the
    transformer's from one plain v1 JSON request (every call sends the same features)."""
    from relearn.serving.config import PredictorSettings
    from relearn.serving.predictor_model import FraudPredictor

    model = FraudPredictor(PredictorSettings(model_uri=str(artifact), model_version="1"))
    model.load()
    fields = transactions()
    rows = [dict(zip(fields, row, strict=True)) for row in zip(*fields.values(), strict=True)]
    reply = httpx.post(f"{stack['transformer'].url}/v1/models/{MODEL}:predict", json={"instances": rows})
    assert reply.status_code == 200, reply.text
    return {
        "predictor": model.score_arrays(*model_arrays()),
        "transformer": np.array([p["score"] for p in reply.json()["predictions"]], dtype=np.float32),
    }
