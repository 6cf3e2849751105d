"""The rollout controller against a real Prometheus server, the local backend and a real MLflow registry.

A metrics endpoint served by ``prometheus_client`` carries the serving metrics (same names and labels as
:mod:`relearn.serving.metrics`); a driver thread plays the traffic the local router would send, reading the
canary share from the LocalBackend state file, so the canary's request count follows the controller's steps.
Prometheus (Debian's ``/usr/bin/prometheus``) scrapes it every second on 127.0.0.1; the controller reads it
over the HTTP API with 5 s rate windows.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from relearn.rollout.analysis import Action
from relearn.rollout.audit import AuditLog
from relearn.rollout.controller import (
    QUERIES,
    REJECTED_TAG,
    ControllerSettings,
    MlflowRegistry,
    Prometheus,
    render,
    step,
)
from relearn.rollout.router import LocalBackend, RouterState

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TICK = 0.1  # seconds between two batches of simulated requests
PER_TICK = 20  # requests per tick (200 requests/s in all)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Traffic:
    """Simulated serving processes: counters and histograms driven by the local router's state file."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "relearn_serving_requests_total",
            "Inference requests by outcome.",
            ["component", "outcome", "model_version"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relearn_serving_stage_duration_seconds",
            "Latency of one serving stage.",
            ["component", "stage", "model_version"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.state_path: Path | None = None
        self.bad: set[str] = set()
        self.served: dict[str, int] = {}
        self.stop = threading.Event()
        self._credit = 0.0

    def _serve(self, version: str, i: int) -> None:
        n = self.served[version] = self.served.get(version, 0) + 1
        outcome = "error" if version in self.bad and n % 4 == 0 else "ok"  # a bad version fails 25 %
        self.requests.labels("predictor", outcome, version).inc()
        self.latency.labels("predictor", "predict", version).observe(0.004 + 0.001 * (i % 5))

    def run(self) -> None:
        i = 0
        while not self.stop.wait(TICK):
            if self.state_path is None or not self.state_path.exists():
                continue
            state = RouterState.load(self.state_path)
            for _ in range(PER_TICK):
                i += 1
                self._credit += state.canary_percent / 100 if state.canary else 0.0
                if self._credit >= 1.0:  # deterministic weighted split
                    self._credit -= 1.0
                    self._serve(state.canary, i)
                elif state.stable:
                    self._serve(state.stable, i)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Traffic]]:
    """A real Prometheus scraping the simulated serving metrics every second."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus binary not installed")
    tmp = tmp_path_factory.mktemp("prometheus")
    traffic = Traffic()
    metrics_port, prom_port = _free_port(), _free_port()
    server, server_thread = start_http_server(metrics_port, addr="127.0.0.1", registry=traffic.registry)
    driver = threading.Thread(target=traffic.run, daemon=True)
    driver.start()
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: serving\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield Prometheus(url, timeout=2), traffic
    finally:
        traffic.stop.set()
        driver.join(5)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        server.shutdown()
        server_thread.join(5)


@pytest.fixture
def registry(settings) -> MlflowRegistry:
    """A real MLflow registry on SQLite in tmp with versions 1..3 of the model; ``champion`` → 1."""
    from mlflow import MlflowClient

    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(settings.model_name)
    source = settings.home / "artifacts"
    source.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        client.create_model_version(settings.model_name, source=str(source))
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    return MlflowRegistry(settings)


def _controller_settings(tmp: Path) -> ControllerSettings:
    return ControllerSettings(
        backend="local",
        state=tmp / "state.json",
        audit_log=tmp / "audit.jsonl",
        window="5s",
        interval_seconds=1.5,
        min_requests=30,
    )


def _analyse(backend, prom, registry, cfg, max_iterations: int = 25) -> list:
    """Iterate like the controller's loop until promote or rollback (bounded)."""
    decisions = []
    for _ in range(max_iterations):
        time.sleep(cfg.interval_seconds)
        decision = step(backend, prom, registry, cfg)
        decisions.append((decision, backend.state().canary_percent))
        if decision.action in (Action.PROMOTE, Action.ROLLBACK):
            break
    return decisions


def _champion(registry: MlflowRegistry) -> str:
    from relearn.model.registry import get_alias_version

    return get_alias_version(registry.settings, "champion")


def test_healthy_canary_steps_and_is_promoted(prometheus, registry, tmp_path: Path) -> None:
    prom, traffic = prometheus
    cfg = _controller_settings(tmp_path)
    backend = LocalBackend(cfg.state)
    for v in ("1", "2"):
        backend.register(v, rest=f"http://127.0.0.1:1/{v}")
    backend.start_canary("2", 10)
    traffic.state_path = cfg.state

    decisions = _analyse(backend, prom, registry, cfg)

    moves = [(d.action.value, d.percent) for d, _ in decisions if d.action is not Action.HOLD]
    assert moves == [("step", 25), ("step", 50), ("promote", None)], decisions
    state = backend.state()
    assert state.stable == "2" and state.canary is None
    assert _champion(registry) == "2"
    audit = AuditLog(cfg.audit_log).entries()
    assert len(audit) == len(decisions), "every decision is audited"
    acted = [e for e in audit if e["action"] != "analysis-hold"]
    assert [e["action"] for e in acted] == ["canary-step", "canary-step", "promote"]
    assert all(e["version"] == "2" and e["reason"] for e in audit)
    assert all(e["snapshot"]["canary_error_rate"] == 0 for e in acted)
    assert acted[-1]["state"]["stable"] == "2"


def test_erroring_canary_is_rolled_back_before_half(prometheus, registry, tmp_path: Path) -> None:
    prom, traffic = prometheus
    cfg = _controller_settings(tmp_path)
    backend = LocalBackend(cfg.state)
    for v in ("1", "3"):
        backend.register(v, rest=f"http://127.0.0.1:1/{v}")
    traffic.bad.add("3")
    backend.start_canary("3", 10)
    traffic.state_path = cfg.state

    decisions = _analyse(backend, prom, registry, cfg)

    assert decisions[-1][0].action is Action.ROLLBACK, decisions
    assert all(d.percent < 50 for d, _ in decisions if d.action is Action.STEP), "rolled back before 50 %"
    print(f"bad canary served {traffic.served.get('3')} requests before its rollback")
    state = backend.state()
    assert state.stable == "1" and state.canary is None and state.canary_percent == 0
    assert _champion(registry) == "1", "champion untouched"
    from relearn.model.registry import get_version_tags

    tag = get_version_tags(registry.settings, "3")[REJECTED_TAG]
    assert "error rate" in tag
    audit = AuditLog(cfg.audit_log).entries()
    assert len(audit) == len(decisions)
    assert audit[-1]["action"] == "rollback" and audit[-1]["reason"] == tag
    assert audit[-1]["snapshot"]["canary_error_rate"] > cfg.max_error_rate
    assert all(e["state"]["canary_percent"] < 50 for e in audit[:-1])


def test_no_canary_is_idle_and_unreachable_prometheus_holds(tmp_path: Path) -> None:
    cfg = _controller_settings(tmp_path)
    backend = LocalBackend(cfg.state)
    backend.register("1", rest="http://127.0.0.1:1/1")
    backend.register("2", rest="http://127.0.0.1:1/2")
    dead = Prometheus(f"http://127.0.0.1:{_free_port()}", timeout=0.5)

    class Untouchable:
        def promote(self, version: str) -> None:
            raise AssertionError("no registry action expected")

        reject = promote  # type: ignore[assignment]

    assert step(backend, dead, Untouchable(), cfg).action is Action.HOLD
    assert AuditLog(cfg.audit_log).entries() == [], "idle iterations are not audited"
    backend.start_canary("2", 10)
    decision = step(backend, dead, Untouchable(), cfg)
    assert decision.action is Action.HOLD and "no metrics" in decision.reason
    assert backend.state().canary_percent == 10, "missing metrics never move traffic"
    assert AuditLog(cfg.audit_log).entries()[-1]["action"] == "analysis-hold"


def test_queries_select_by_model_version_and_window() -> None:
    cfg = ControllerSettings(window="30s", component="predictor")
    assert set(QUERIES) >= {"requests", "error_rate", "p99_seconds", "score_divergence", "drift_share"}
    q = render("error_rate", cfg, version="7")
    assert 'model_version="7"' in q and "[30s]" in q and 'outcome=~"error|unavailable"' in q
    assert 'track="canary"' in render("drift_share", cfg, track="canary")
    # the drift detector exports the canary-vs-stable score KS statistic
    divergence = render("score_divergence", cfg, track="canary")
    assert divergence == 'max(relearn_drift_score_divergence{track="canary"})'


def test_controller_help() -> None:
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "relearn.rollout.controller", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--prometheus-url" in out and "--once" in out and "RELEARN_ROLLOUT_" in out
