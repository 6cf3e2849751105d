"""Processes for the local end-to-end rollout: predictors, router, Prometheus, drift detector, load, labels.

Shared by tests/rollout/test_rollout_e2e.py and benchmarks/rollout.py.

The world of the test: requests are drawn from a fixed pool whose frauds are the top :data:`FRAUD_SHARE` of
v1's scores (scored by the real predictor code), so v1 (and v2, v1 plus a tiny logit shift) rank frauds
first and v4 (v1's logit negated) ranks them last. With a pool the predictors log to a real drift detector;
one process per version plays every role in turn, its events tagged per request (the router's route,
Envoy's ``-shadow`` host: :func:`relearn.serving.payload_log.event_route`), and the load generator posts
the chargebacks of the frauds it sent (``POST /labels``) every second while ``chargebacks`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from relearn.rollout.analysis import Action
from relearn.rollout.controller import (
    ControllerSettings,
    MlflowRegistry,
    Prometheus,
    ShadowSource,
    step,
)
from relearn.rollout.local_backend import LocalBackend
from relearn.rollout.router import ROUTE_HEADER
from relearn.rollout.shadow import ShadowSettings
from relearn.serving.metrics import SHADOW_SUFFIX
from support.serving_stack import PYTHON, Server, free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DRIFT_PYTHON = ROOT / ".venv" / "drift" / "bin" / "python"  # the detector's own environment (numpy<2)
MODEL = "relearn-fraud"
SHADOW_SERVICE = MODEL + SHADOW_SUFFIX  # ce-inferenceservicename of mirrored requests' events
RATE = 20.0  # requests/s per load-generator thread
THREADS = 2
WINDOW = 5.0  # seconds, the controller's rate window
CATEGORIES = ["grocery", "pos", "DE", "EUR", "13"]  # all in the contract's vocabularies
FRAUD_SHARE = 0.05  # frauds in the request pool, and the detector's alert budget


# ------------------------------------------------------------------------------------------- artifacts
def make_artifacts(root: Path) -> dict[str, Path]:
    """Tiny artifacts v1..v4: a model, a good challenger, one that errors, one with a much worse precision.

    v2 is v1 plus a 0.002 logit shift; v3's embedding tables are smaller than its vocabularies (every
    request fails with IndexError); v4 is v1 with its logit negated (its scores reverse v1's ranking).
    """
    import torch

    from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
    from relearn.model.net import FraudNet, Preprocessor, save_model

    torch.manual_seed(0)
    n = len(NUMERIC_INPUTS)
    pre = Preprocessor(NUMERIC_INPUTS, CATEGORICAL_INPUTS, [0.0] * n, [1.0] * n)
    v1, v2, v4 = (FraudNet(pre.mean, pre.std, pre.cardinalities, hidden=(8,), dropout=0.0) for _ in range(3))
    with torch.no_grad():
        v1.mlp[-1].weight.mul_(30.0)  # an untrained net scores everything near 0.5: spread the scores
        v2.load_state_dict(v1.state_dict())
        v2.output_bias.add_(0.002)
        v4.load_state_dict(v1.state_dict())
        v4.mlp[-1].weight.neg_()
        v4.output_bias.neg_()
    v3 = FraudNet(pre.mean, pre.std, [1] * len(CATEGORICAL_INPUTS), hidden=(8,), dropout=0.0)
    return {
        version: save_model(root / f"v{version}", net, pre, {"threshold": 0.5})
        for version, net in (("1", v1), ("2", v2), ("3", v3), ("4", v4))
    }


@dataclass(frozen=True)
class Pool:
    """The requests the load generator draws from: numeric inputs, v1's scores and the fraud truth."""

    numeric: np.ndarray
    scores: np.ndarray
    fraud: np.ndarray

    @classmethod
    def scored_by(cls, artifact: Path, n: int = 2000, seed: int = 0) -> Pool:
        """Random inputs scored by ``artifact`` through the predictor's code; its top scores are frauds."""
        from relearn.serving.config import PredictorSettings
        from relearn.serving.predictor_model import FraudPredictor

        numeric = np.random.default_rng(seed).uniform(0, 3, size=(n, 17)).astype(np.float32)
        model = FraudPredictor(PredictorSettings(model_uri=str(artifact), model_version="pool"))
        model.load()
        scores = model.score_arrays(numeric, np.array([CATEGORIES] * n, dtype=object))
        return cls(numeric, scores, scores >= np.quantile(scores, 1 - FRAUD_SHARE))

    def reference(self, path: Path) -> Path:
        """The drift detector's reference sample (model inputs and scores) as Parquet."""
        import pandas as pd

        from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS

        frame = pd.DataFrame(self.numeric.astype(np.float64), columns=list(NUMERIC_INPUTS))
        frame = frame.assign(**dict(zip(CATEGORICAL_INPUTS, CATEGORIES, strict=True)), score=self.scores)
        frame.to_parquet(path, index=False)
        return path


def v2_request(numeric: np.ndarray, request_id: str) -> dict:
    """A v2 REST inference request of one row; the request id is the transaction id."""
    return {
        "id": request_id,
        "inputs": [
            {"name": "numeric", "datatype": "FP32", "shape": [1, 17], "data": numeric.tolist()},
            {"name": "categorical", "datatype": "BYTES", "shape": [1, 5], "data": CATEGORIES},
        ],
    }


def grpc_request(numeric: np.ndarray, request_id: str) -> Any:
    """The same request as a v2 gRPC ``ModelInferRequest`` with raw tensor contents."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from relearn.serving.tensors import serialize_bytes

    tensor = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(
        model_name=MODEL,
        id=request_id,
        inputs=[
            tensor(name="numeric", datatype="FP32", shape=[1, 17]),
            tensor(name="categorical", datatype="BYTES", shape=[1, 5]),
        ],
        raw_input_contents=[
            numeric.astype(np.float32).tobytes(),
            serialize_bytes(np.array(CATEGORIES, dtype=object)),
        ],
    )


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Load:
    """Paced v2 REST (and, with ``grpc``, v2 gRPC) requests through the router, counted by route.

    ``ok`` / ``failed`` count by route (REST: the ``x-relearn-route`` header, gRPC: the same trailing
    metadata), ``by_version`` the answering model versions, ``protocols`` the successes per protocol. With
    ``labels_url`` the chargebacks of the frauds sent are posted there every second while ``chargebacks``
    is set (clear it and they wait: labels arrive days late in production).
    """

    url: str
    rate: float = RATE
    grpc: str | None = None
    pool: Pool | None = None
    labels_url: str | None = None
    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    by_version: Counter = field(default_factory=Counter)
    protocols: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    frauds: list[str] = field(default_factory=list)
    labelled: int = 0
    chargebacks: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _draw(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """A fresh transaction id and its inputs (a fraud's id is remembered for its chargeback)."""
        tid = f"tx-{uuid.uuid4().hex}"
        if self.pool is None:
            return tid, rng.uniform(0, 3, size=17).astype(np.float32)
        i = int(rng.integers(len(self.pool.numeric)))
        if self.pool.fraud[i]:
            with self.lock:
                self.frauds.append(tid)
        return tid, self.pool.numeric[i]

    def _rest(self, rng: np.random.Generator, client: httpx.Client) -> tuple[str, bool, str | None, str]:
        tid, numeric = self._draw(rng)
        route = "unattributed"
        try:
            resp = client.post(f"{self.url}/v2/models/{MODEL}/infer", json=v2_request(numeric, tid))
            route = resp.headers.get(ROUTE_HEADER, route)
            if resp.status_code == 200:
                return route, True, resp.json().get("model_version"), ""
            return route, False, None, f"{route} {resp.status_code} {resp.text[:200]}"
        except httpx.HTTPError as exc:
            return route, False, None, f"{route} {exc!r}"

    def _grpc(self, rng: np.random.Generator, stub: Any) -> tuple[str, bool, str | None, str]:
        import grpc

        tid, numeric = self._draw(rng)
        try:
            response, call = stub.ModelInfer.with_call(grpc_request(numeric, tid), timeout=10)
            return _route(call.trailing_metadata()), True, response.model_version, ""
        except grpc.RpcError as exc:
            route = _route(exc.trailing_metadata())
            return route, False, None, f"{route} gRPC {exc.code().name} {exc.details()}"

    def _paced(self, protocol: str, send: Callable[[], tuple[str, bool, str | None, str]]) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            route, good, version, detail = send()
            with self.lock:
                (self.ok if good else self.failed)[route] += 1
                if good:
                    self.by_version[version] += 1
                    self.protocols[protocol] += 1
                elif len(self.errors) < 20:
                    self.errors.append(detail)
            next_at += 1 / self.rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - 1.0)  # no bursts after a stall

    def _run_rest(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=10) as client:
            self._paced("rest", lambda: self._rest(rng, client))

    def _run_grpc(self, seed: int) -> None:
        import grpc
        from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.grpc) as channel:
            stub = GRPCInferenceServiceStub(channel)
            self._paced("grpc", lambda: self._grpc(rng, stub))

    def _chargebacks(self) -> None:
        """Post the frauds sent since the last delivery as chargebacks (labels arrive after predictions)."""
        while not self.stop.wait(1.0):
            if not self.chargebacks.is_set():
                continue
            with self.lock:
                new = self.frauds[self.labelled :]
            if not new:
                continue
            now = datetime.now(UTC).isoformat()
            body = [{"transaction_id": tid, "chargeback_timestamp": now} for tid in new]
            try:
                httpx.post(
                    f"{self.labels_url}/labels", content=json.dumps(body), timeout=10
                ).raise_for_status()
                self.labelled += len(new)
            except httpx.HTTPError as exc:
                self.errors.append(f"labels: {exc!r}")

    def start(self) -> Load:
        targets: list[tuple[Callable[..., None], tuple]] = [(self._run_rest, (i,)) for i in range(THREADS)]
        if self.grpc:
            targets.append((self._run_grpc, (THREADS,)))
        if self.labels_url:
            self.chargebacks.set()
            targets.append((self._chargebacks, ()))
        for target, args in targets:
            t = threading.Thread(target=target, args=args, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def snapshot(self) -> tuple[Counter, Counter, Counter]:
        with self.lock:
            return Counter(self.ok), Counter(self.failed), Counter(self.by_version)


def _route(metadata: Any) -> str:
    """The route the router names in a gRPC call's trailing metadata."""
    return next((v for k, v in metadata or () if k == ROUTE_HEADER), "unattributed")


# --------------------------------------------------------------------------------------------- stack
def wait_until(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"process exited early: {p.args}"
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


@contextmanager
def detector_over(data_dir: Path) -> Iterator[str]:
    """A drift detector process on loopback over the inference log in ``data_dir``: its URL.

    Its reference is a constant frame (these tests read the log's rows, not drift); stopped on exit.
    """
    import pandas as pd

    from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS

    frame = pd.DataFrame(np.ones((10, len(NUMERIC_INPUTS))), columns=list(NUMERIC_INPUTS))
    frame.assign(**dict(zip(CATEGORICAL_INPUTS, CATEGORIES, strict=True)), score=0.1).to_parquet(
        data_dir / "reference.parquet"
    )
    port = free_port()
    env = {
        **os.environ,
        "RELEARN_DRIFT_HOST": "127.0.0.1",
        "RELEARN_DRIFT_PORT": str(port),
        "RELEARN_DRIFT_DATA_DIR": str(data_dir),
        "RELEARN_DRIFT_REFERENCE_PATH": str(data_dir / "reference.parquet"),
        "RELEARN_DRIFT_REPORTS": "false",
    }
    with (data_dir / "detector.log").open("w") as log:
        proc = subprocess.Popen(
            [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/ready", timeout=1).status_code == 200, 120, "detector", [proc])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


class Stack:
    """Predictors (one per artifact), the router, Prometheus and optionally the drift detector (127.0.0.1).

    Args:
        tmp: Working directory (logs, state, Prometheus data, the detector's log).
        artifacts: Version → model artifact; the first registered version is the stable one.
        pool: With it, a drift detector runs (reference: the pool scored by v1) and every predictor logs
            its predictions to it.
    """

    def __init__(self, tmp: Path, artifacts: dict[str, Path], pool: Pool | None = None) -> None:
        self.tmp = tmp
        self.state = tmp / "rollout" / "state.json"
        self.backend = LocalBackend(self.state)
        self.predictors: dict[str, Server] = {}
        self.procs: list[subprocess.Popen] = []
        self.logs = {name: (tmp / f"{name}.log").open("w") for name in ("router", "prometheus", "detector")}
        self.detector_url = self._start_detector(pool) if pool is not None else None
        for version, artifact in artifacts.items():
            args = ["--model-uri", str(artifact), "--model-version", version, "--workers", "1"]
            if self.detector_url:
                args += ["--log-sink-url", f"{self.detector_url}/", "--inference-service", MODEL]
            server = Server("relearn.serving.predictor", args, {}, tmp / f"predictor-v{version}.log")
            self.predictors[version] = server.start()
        rest, grpc_port = free_port(), free_port()
        self.url, self.grpc_target = f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"
        cmd = [PYTHON, "-m", "relearn.rollout.router", "--state", str(self.state), "--seed", "11"]
        cmd += ["--rest-port", str(rest), "--grpc-port", str(grpc_port)]
        self.procs.append(subprocess.Popen(cmd, stdout=self.logs["router"], stderr=subprocess.STDOUT))
        prom_port = free_port()
        jobs = {"predictors": [f"127.0.0.1:{s.http_port}" for s in self.predictors.values()]}
        if self.detector_url:
            jobs["drift"] = [self.detector_url.removeprefix("http://")]
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n"
            + "".join(
                f"  - {{job_name: {job}, static_configs: [{{targets: {json.dumps(t)}}}]}}\n"
                for job, t in jobs.items()
            )
        )
        prometheus = [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ]
        self.procs.append(
            subprocess.Popen(prometheus, stdout=subprocess.DEVNULL, stderr=self.logs["prometheus"])
        )
        self.prom = Prometheus(f"http://127.0.0.1:{prom_port}", timeout=3)

    def _start_detector(self, pool: Pool) -> str:
        """``python -m relearn.monitoring.server`` in the drift environment; returns its base URL."""
        port = free_port()
        env = {
            **os.environ,
            "RELEARN_DRIFT_HOST": "127.0.0.1",
            "RELEARN_DRIFT_PORT": str(port),
            "RELEARN_DRIFT_DATA_DIR": str(self.tmp / "drift"),
            "RELEARN_DRIFT_REFERENCE_PATH": str(pool.reference(self.tmp / "reference.parquet")),
            "RELEARN_DRIFT_WINDOW_SIZE": "1000000",  # rollouts, not input drift: no drift windows close
            "RELEARN_DRIFT_SHADOW_SERVICE": SHADOW_SERVICE,
            "RELEARN_DRIFT_KEY_BY_REQUEST_ID": "true",  # predictor events: the request id is the transaction
            "RELEARN_DRIFT_ALERT_BUDGET": str(FRAUD_SHARE),
            "RELEARN_DRIFT_QUALITY_WINDOW": "1000",
            "RELEARN_DRIFT_SQLITE_SYNCHRONOUS": "NORMAL",
            "RELEARN_DRIFT_REPORTS": "false",
            "RELEARN_DRIFT_POLL_S": "0.1",
        }
        cmd = [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server"]
        self.procs.append(
            subprocess.Popen(cmd, env=env, stdout=self.logs["detector"], stderr=subprocess.STDOUT)
        )
        return f"http://127.0.0.1:{port}"

    def wait_ready(self) -> None:
        for server in self.predictors.values():
            server.wait_ready(timeout=120)
        for version, server in self.predictors.items():
            self.backend.register(version, rest=server.url, grpc=server.grpc_target)  # v1 first: stable
        checks = [
            (f"{self.url}/v2/health/ready", "router"),
            (f"{self.prom.url}/-/ready", "prometheus"),
            *([(f"{self.detector_url}/ready", "drift detector")] if self.detector_url else []),
        ]
        for url, what in checks:
            wait_until(lambda u=url: httpx.get(u, timeout=1).status_code == 200, 120, what, self.procs)
        scraped = len(self.predictors) + bool(self.detector_url)  # every target scraped at least once
        wait_until(lambda: (self.prom.query("count(up == 1)") or 0) >= scraped, 30, "scrapes", self.procs)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for server in self.predictors.values():
            server.stop()
        for log in self.logs.values():
            log.close()


def analyse(
    stack: Stack,
    registry: MlflowRegistry,
    cfg: ControllerSettings,
    budget: float,
    shadow_events: Callable[[], list] | None = None,
    shadow_settings: ShadowSettings | None = None,
    shadow_comparison: ShadowSource | None = None,
    until: tuple[Action, ...] = (Action.PROMOTE, Action.ROLLBACK),
) -> list:
    """The controller's loop (bounded): ``step`` every ``interval_seconds`` until an ``until`` action."""
    decisions = []
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        time.sleep(cfg.interval_seconds)
        decision = step(
            stack.backend,
            stack.prom,
            registry,
            cfg,
            shadow_events=shadow_events,
            shadow_settings=shadow_settings,
            shadow_comparison=shadow_comparison,
        )
        decisions.append((decision, stack.backend.state().canary_percent, time.monotonic()))
        if decision.action in until:
            break
    return decisions
