"""Processes for the local end-to-end rollout: tiny predictor artifacts, router, Prometheus, load.

Shared by tests/test_rollout_e2e.py and benchmarks/rollout.py.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from relearn.rollout.analysis import Action
from relearn.rollout.controller import (
    ControllerSettings,
    MlflowRegistry,
    Prometheus,
    step,
)
from relearn.rollout.router import ROUTE_HEADER, LocalBackend
from relearn.rollout.shadow import ShadowSettings
from serving_stack import PYTHON, EventSink, Server, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
MODEL = "relearn-fraud"
RATE = 20.0  # requests/s per load-generator thread
THREADS = 2
WINDOW = 5.0  # seconds, the controller's rate window
CATEGORIES = ["grocery", "pos", "DE", "EUR", "13"]  # all in the contract's vocabularies


# ------------------------------------------------------------------------------------------- artifacts
def make_artifacts(root: Path) -> dict[str, Path]:
    """Tiny artifacts: v1, v2 (v1 + a 0.002 logit shift) and v3 (embedding tables too small: errors)."""
    import torch

    from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
    from relearn.model.net import FraudNet, Preprocessor, save_model

    torch.manual_seed(0)
    n = len(NUMERIC_INPUTS)
    pre = Preprocessor(NUMERIC_INPUTS, CATEGORICAL_INPUTS, [0.0] * n, [1.0] * n)
    v1 = FraudNet(pre.mean, pre.std, pre.cardinalities, hidden=(8,), dropout=0.0)
    v2 = FraudNet(pre.mean, pre.std, pre.cardinalities, hidden=(8,), dropout=0.0)
    with torch.no_grad():
        v1.mlp[-1].weight.mul_(30.0)  # an untrained net scores everything near 0.5: spread the scores
        v2.load_state_dict(v1.state_dict())
        v2.output_bias.add_(0.002)
    v3 = FraudNet(pre.mean, pre.std, [1] * len(CATEGORICAL_INPUTS), hidden=(8,), dropout=0.0)
    out = {}
    for version, net in (("1", v1), ("2", v2), ("3", v3)):
        out[version] = save_model(root / f"v{version}", net, pre, {"threshold": 0.5})
    return out


def v2_request(rng: np.random.Generator) -> dict:
    numeric = rng.uniform(0, 3, size=(1, 17)).astype(np.float32)
    return {
        "id": uuid.uuid4().hex,
        "inputs": [
            {"name": "numeric", "datatype": "FP32", "shape": [1, 17], "data": numeric.ravel().tolist()},
            {"name": "categorical", "datatype": "BYTES", "shape": [1, 5], "data": CATEGORIES},
        ],
    }


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Load:
    """Paced v2 REST requests through the router; outcomes counted by route."""

    url: str
    rate: float = RATE
    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    by_version: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        url = f"{self.url}/v2/models/{MODEL}/infer"
        with httpx.Client(timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                route, good, version = "unattributed", False, None
                try:
                    resp = client.post(url, json=v2_request(rng))
                    route = resp.headers.get(ROUTE_HEADER, "unattributed")
                    good = resp.status_code == 200
                    if good:
                        version = resp.json().get("model_version")
                    else:
                        detail = f"{route} {resp.status_code} {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    detail = f"{route} {exc!r}"
                with self.lock:
                    (self.ok if good else self.failed)[route] += 1
                    if good:
                        self.by_version[version] += 1
                    elif len(self.errors) < 20:
                        self.errors.append(detail)
                next_at += 1 / self.rate
                self.stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - 1.0)  # no bursts after a stall

    def start(self) -> Load:
        for i in range(THREADS):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
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


def sink_events(sink: EventSink, track: str) -> list[tuple[str, str, str, str, bytes]]:
    """(ce_id, type, track, time, body) tuples of the payload-logger events a sink received."""
    with sink.lock:
        events = list(sink.events)
    return [(h.get("ce-id", ""), h.get("ce-type", ""), track, h.get("ce-time", ""), b) for h, b in events]


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


class Stack:
    """Predictors v1..v3, two event sinks, the router and Prometheus (all on 127.0.0.1)."""

    def __init__(self, tmp: Path, artifacts: dict[str, Path]) -> None:
        self.tmp = tmp
        self.state = tmp / "rollout" / "state.json"
        self.backend = LocalBackend(self.state)
        self.sinks = {"stable": EventSink(), "shadow": EventSink()}
        self.predictors: dict[str, Server] = {}
        self.procs: list[subprocess.Popen] = []
        self.router_log = (tmp / "router.log").open("w")
        self.prom_log = (tmp / "prometheus.log").open("w")
        for version, artifact in artifacts.items():
            args = ["--model-uri", str(artifact), "--model-version", version, "--workers", "1"]
            sink = {"1": "stable", "2": "shadow"}.get(version)
            if sink:
                args += ["--log-sink-url", self.sinks[sink].url]
            server = Server("relearn.serving.predictor", args, {}, tmp / f"predictor-v{version}.log")
            self.predictors[version] = server.start()
        rest, grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{rest}"
        cmd = [PYTHON, "-m", "relearn.rollout.router", "--state", str(self.state), "--seed", "11"]
        cmd += ["--rest-port", str(rest), "--grpc-port", str(grpc_port)]
        self.router = subprocess.Popen(
            cmd,
            stdout=self.router_log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(self.router)
        prom_port = free_port()
        targets = ", ".join(f"'127.0.0.1:{s.http_port}'" for s in self.predictors.values())
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: predictors\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )
        self.prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.prom_log,
        )
        self.procs.append(self.prometheus)
        self.prom = Prometheus(f"http://127.0.0.1:{prom_port}", timeout=3)

    def wait_ready(self) -> None:
        for server in self.predictors.values():
            server.wait_ready(timeout=90)
        for version, server in self.predictors.items():
            self.backend.register(version, rest=server.url, grpc=server.grpc_target)  # v1 first: stable
        wait_until(
            lambda: httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200,
            30,
            "router",
            self.procs,
        )
        wait_until(
            lambda: httpx.get(f"{self.prom.url}/-/ready", timeout=1).status_code == 200,
            30,
            "prometheus",
            self.procs,
        )
        # every predictor scraped at least once
        wait_until(
            lambda: (self.prom.query('count(up{job="predictors"} == 1)') or 0) >= len(self.predictors),
            30,
            "prometheus scrapes",
            self.procs,
        )

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
        for sink in self.sinks.values():
            sink.close()
        self.router_log.close()
        self.prom_log.close()


def analyse(
    stack: Stack,
    registry: MlflowRegistry,
    cfg: ControllerSettings,
    budget: float,
    shadow_events: Callable[[], list] | None = None,
    shadow_settings: ShadowSettings | None = None,
) -> list:
    """The controller's loop (bounded): ``step`` every ``interval_seconds`` until promote or rollback."""
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
        )
        decisions.append((decision, stack.backend.state().canary_percent, time.monotonic()))
        if decision.action in (Action.PROMOTE, Action.ROLLBACK):
            break
    return decisions
