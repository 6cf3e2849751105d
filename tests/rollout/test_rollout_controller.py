"""The rollout controller against a real Prometheus server, the local backend and a real MLflow registry.

A metrics endpoint served by ``prometheus_client`` carries the serving metrics (same names and labels as
:mod:`relearn.serving.metrics`); a driver thread plays the traffic the local router would send, reading the
canary share and the mirror from the LocalBackend state file, so the canary's request count follows the
controller's steps and a shadow receives mirrored requests (``track="mirror"``).
Prometheus (Debian's ``/usr/bin/prometheus``) scrapes it every second on 127.0.0.1; the controller reads it
over the HTTP API with 5 s rate windows.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from relearn.demo.stack import free_port
from relearn.rollout.analysis import Action
from relearn.rollout.audit import AuditLog
from relearn.rollout.backend import RolloutState
from relearn.rollout.controller import (
    REJECTED_TAG,
    ControllerSettings,
    MlflowRegistry,
    Prometheus,
    run,
    shadow_source,
    step,
)
from relearn.rollout.local_backend import LocalBackend, RouterState
from relearn.rollout.prometheus import QUERIES, PrometheusError, render

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TICK = 0.1  # seconds between two batches of simulated requests
PER_TICK = 20  # requests per tick (200 requests/s in all)


class Traffic:
    """Simulated serving processes: counters and histograms driven by the local router's state file."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "relearn_serving_requests_total",
            "Inference requests by outcome.",
            ["component", "outcome", "model_version", "track"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relearn_serving_stage_duration_seconds",
            "Latency of one serving stage.",
            ["component", "stage", "model_version", "track"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.state_path: Path | None = None
        self.bad: set[str] = set()
        self.served: dict[str, int] = {}
        self.stop = threading.Event()
        self._credit = 0.0

    def _serve(self, version: str, i: int, track: str = "primary") -> None:
        n = self.served[version] = self.served.get(version, 0) + 1
        outcome = "error" if version in self.bad and n % 4 == 0 else "ok"  # a bad version fails 25 %
        self.requests.labels("predictor", outcome, version, track).inc()
        self.latency.labels("predictor", "predict", version, track).observe(0.004 + 0.001 * (i % 5))

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
                if state.shadow and state.mirror_percent >= 100:
                    self._serve(state.shadow, i, "mirror")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Traffic]]:
    """A real Prometheus scraping the simulated serving metrics every second."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus binary not installed")
    tmp = tmp_path_factory.mktemp("prometheus")
    traffic = Traffic()
    metrics_port, prom_port = free_port(), free_port()
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
    register_versions(MlflowClient(tracking_uri=uri, registry_uri=uri), settings, 3, champion="1")
    return MlflowRegistry(settings)


def register_versions(client, settings, count: int, champion: str) -> None:
    """``count`` versions of the model (one artifact directory) and the ``champion`` alias on one of them."""
    client.create_registered_model(settings.model_name)
    source = settings.home / "artifacts"
    source.mkdir(parents=True, exist_ok=True)
    for _ in range(count):
        client.create_model_version(settings.model_name, source=str(source))
    client.set_registered_model_alias(settings.model_name, "champion", champion)


def _controller_settings(tmp: Path) -> ControllerSettings:
    return ControllerSettings(
        backend="local",
        state=tmp / "state.json",
        audit_log=tmp / "audit.jsonl",
        window="5s",
        interval_seconds=1.5,
        min_requests=30,
    )


def _local(
    tmp: Path, *versions: str, traffic: Traffic | None = None, **settings: object
) -> tuple[ControllerSettings, LocalBackend]:
    """Settings and a local backend with ``versions`` (the first is stable), followed by ``traffic``."""
    cfg = _controller_settings(tmp).model_copy(update=settings)
    backend = LocalBackend(cfg.state)
    for v in versions:
        backend.register(v, rest=f"http://127.0.0.1:1/{v}")
    if traffic is not None:
        traffic.state_path = cfg.state
    return cfg, backend


def _analyse(backend, prom, registry, cfg, max_iterations: int = 25, backtest=None) -> list:
    """Iterate like the controller's loop until promote or rollback (bounded)."""
    decisions = []
    for _ in range(max_iterations):
        time.sleep(cfg.interval_seconds)
        decision = step(backend, prom, registry, cfg, backtest=backtest)
        decisions.append((decision, backend.state().canary_percent))
        if decision.action in (Action.PROMOTE, Action.ROLLBACK):
            break
    return decisions


def _champion(registry: MlflowRegistry) -> str:
    from relearn.model.registry import get_alias_version

    return get_alias_version(registry.settings, "champion")


def test_healthy_canary_is_held_without_evidence_then_promoted_on_a_backtest(
    prometheus, settings, tmp_path: Path
) -> None:
    """Healthy on every gate but without labels: 10 -> 25 -> 50, then held there (the label gates are
    unknown, not passed) until the backtest on the detector's inference log shows v2 no worse than v1 on
    traffic served since v2's training began; the promotion's audit entry records that evidence."""
    from mlflow import MlflowClient
    from test_rollout_backtest import serve

    from relearn.monitoring.store import connect
    from relearn.rollout.controller import backtest_for
    from support.rollout_stack import make_artifacts

    prom, traffic = prometheus
    artifacts = make_artifacts(tmp_path / "artifacts")
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    client.create_registered_model(settings.model_name)
    for version in ("1", "2"):
        client.create_model_version(settings.model_name, source=str(artifacts[version]))
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    registry, db = MlflowRegistry(settings), tmp_path / "inference-log.sqlite3"
    connect(db).close()  # the detector's log, no labelled traffic yet
    cfg, backend = _local(tmp_path, "1", "2", traffic=traffic, inference_log=db)
    backtest = backtest_for(cfg, settings)
    backend.start_canary("2", 10)

    held = _analyse(backend, prom, registry, cfg, max_iterations=8, backtest=backtest)

    moves = [(d.action.value, d.percent) for d, _ in held if d.action is not Action.HOLD]
    assert moves == [("step", 25), ("step", 50)], held
    assert held[-1][0].action is Action.HOLD and backend.state().canary_percent == 50
    assert _champion(registry) == "1"
    waiting = AuditLog(cfg.audit_log).entries()[-1]
    assert waiting["action"] == "analysis-hold" and waiting["evidence"] is None
    assert "canary-labels unknown: 0 labelled canary predictions < 50" in waiting["reason"]
    assert (
        "backtest unknown: 0 labelled predictions (0 fraud) served since v2's training began"
        in (waiting["reason"])
    )

    serve(db, artifacts["1"], 1000, when=time.time())  # chargebacks matured for 1,000 served requests
    decisions = _analyse(backend, prom, registry, cfg, backtest=backtest)

    assert decisions[-1][0].action is Action.PROMOTE, decisions
    assert backend.state().stable == "2" and _champion(registry) == "2"
    audit = AuditLog(cfg.audit_log).entries()
    assert len(audit) == len(held) + len(decisions), "every decision is audited"
    promotion = audit[-1]
    assert (
        promotion["action"] == "promote" and "evidence: backtest passed: 1000 labelled" in promotion["reason"]
    )
    evidence = promotion["evidence"]
    assert evidence["source"] == "backtest" and evidence["verdict"] == "passed"
    assert (evidence["n"], evidence["positives"], evidence["effect"]) == (1000, 50, 0.0)
    assert evidence["lower"] == evidence["upper"] == 0.0 and evidence["confidence"] == 0.975
    steps = [e for e in audit if e["action"] == "canary-step"]
    assert len(steps) == 2 and all(e["snapshot"]["canary_error_rate"] == 0 for e in steps)


def test_erroring_canary_is_rolled_back_before_half(prometheus, registry, tmp_path: Path) -> None:
    prom, traffic = prometheus
    cfg, backend = _local(tmp_path, "1", "3", traffic=traffic)
    traffic.bad.add("3")
    backend.start_canary("3", 10)

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


def test_mirrored_failures_stay_out_of_the_canary_windows(prometheus, registry, tmp_path: Path) -> None:
    """A shadow fails a quarter of its mirrored requests, then serves live traffic cleanly as a canary.

    Its first canary windows still hold the mirrored errors (``track="mirror"``): counted, they would roll
    it back at once; the controller's queries skip them, so it steps and is promoted.
    """
    prom, traffic = prometheus
    # No evidence of quality asked for here (a policy above 100 %): this test is about the windows.
    cfg, backend = _local(tmp_path, "1", "2", traffic=traffic, evidence_from_percent=101)
    traffic.bad.add("2")
    backend.start_shadow("2", 100)
    # Wait until the analysis window holds mirrored errors, then make the shadow a healthy canary.
    errors = 'sum(increase(relearn_serving_requests_total{{model_version="2",outcome="error"}}[{}]))'
    deadline = time.monotonic() + 20
    while (prom.query(errors.format(cfg.window)) or 0) < 50:
        assert time.monotonic() < deadline, "no mirrored errors in the window"
        time.sleep(0.5)
    traffic.bad.discard("2")
    backend.stop_shadow()
    backend.start_canary("2", 10)

    decisions = _analyse(backend, prom, registry, cfg)

    moves = [(d.action.value, d.percent) for d, _ in decisions if d.action is not Action.HOLD]
    assert moves == [("step", 25), ("step", 50), ("promote", None)], decisions
    assert all(e["snapshot"]["canary_error_rate"] == 0 for e in AuditLog(cfg.audit_log).entries())


def test_no_canary_is_idle_and_unreachable_prometheus_holds(tmp_path: Path) -> None:
    cfg, backend = _local(tmp_path, "1", "2")
    dead = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=0.5)

    class Untouchable:
        def promote(self, version: str) -> None:
            raise AssertionError("no registry action expected")

        reject = promote  # type: ignore[assignment]

    assert step(backend, dead, Untouchable(), cfg).action is Action.HOLD
    assert AuditLog(cfg.audit_log).entries() == [], "idle iterations are not audited"
    with pytest.raises(PrometheusError) as unreachable:  # the error model's: 503, retry later
        dead.query("up")
    failed = unreachable.value
    assert isinstance(failed, RuntimeError) and (failed.status, failed.grpc_code) == (503, "UNAVAILABLE")
    backend.start_canary("2", 10)
    decision = step(backend, dead, Untouchable(), cfg)
    assert decision.action is Action.HOLD and "no metrics" in decision.reason
    assert backend.state().canary_percent == 10, "missing metrics never move traffic"
    assert AuditLog(cfg.audit_log).entries()[-1]["action"] == "analysis-hold"


def test_shadow_gate_holds_while_the_detector_is_unreachable(tmp_path: Path) -> None:
    """The shadow comparison comes from the detector's ``GET /v1/shadow``: no answer, no move."""
    dead_detector = f"http://127.0.0.1:{free_port()}"
    cfg, backend = _local(tmp_path, "1", "2", detector_url=dead_detector, detector_timeout_seconds=0.5)
    backend.start_shadow("2", 100)
    source = shadow_source(cfg)
    assert source is not None
    decision = step(backend, None, None, cfg, shadow_comparison=source)  # type: ignore[arg-type]
    assert decision.action is Action.HOLD and "shadow 2: no comparison" in decision.reason
    assert backend.state().shadow == "2" and backend.state().canary is None
    assert shadow_source(_controller_settings(tmp_path)) is None, "no detector, no log: no shadow gate"


def test_queries_select_by_model_version_and_window() -> None:
    cfg = ControllerSettings(window="30s", component="predictor")
    assert set(QUERIES) >= {"requests", "error_rate", "p99_seconds", "score_divergence", "drift_share"}
    q = render("error_rate", cfg, version="7")
    assert 'model_version="7"' in q and "[30s]" in q and 'outcome=~"error|unavailable"' in q
    for gate in ("requests", "error_rate", "p99_seconds"):  # live traffic only, never mirrored requests
        assert 'track!="mirror"' in render(gate, cfg, version="7"), gate
    # the label gates compare one version's precision with another's (the detector's per-version gauges)
    assert render("precision", cfg, track="canary", version="7") == (
        'max(relearn_drift_version_precision_at_budget{track="canary",model_version="7"})'
    )
    assert render("reviewed", cfg, track="stable", version="6") == (
        'max(relearn_drift_version_reviewed_predictions{track="stable",model_version="6"})'
    )
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
    assert "--detector-url" in out and "--shadow-log" in out


def test_run_moves_a_shadow_to_canary_from_the_detectors_log(tmp_path: Path) -> None:
    """Local mode (``shadow_log``): the controller reads the detector's inference log itself."""
    import json

    from relearn.events import RESPONSE_TYPE
    from relearn.monitoring.store import connect

    db = tmp_path / "inference-log.sqlite3"
    conn = connect(db)  # the detector's own schema
    rows = []
    for i in range(250):
        for track, version in (("stable", "1"), ("shadow", "2")):
            body = {"predictions": [{"score": (i % 10) / 10}], "model_version": version}
            rows.append((f"r{i}", RESPONSE_TYPE, track, "", json.dumps(body).encode()))
    with conn:
        conn.executemany(
            "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, ?, ?, ?, 0, ?)", rows
        )
    conn.close()
    cfg, backend = _local(tmp_path, "1", "2", shadow_log=db)
    backend.start_shadow("2", 100)
    dead = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=0.5)

    (decision,) = run(cfg, prometheus=dead, registry=object(), max_iterations=1)  # type: ignore[arg-type]

    assert decision.action is Action.STEP and decision.percent == 10, decision
    assert backend.state() == RolloutState(stable="1", canary="2", canary_percent=10)
    (entry,) = AuditLog(cfg.audit_log).entries()
    assert entry["action"] == "shadow-to-canary" and entry["reason"].startswith("250 pairs: agreement 1")


def test_run_pins_the_stable_revision_once_its_alias_exists(settings, tmp_path: Path) -> None:
    """The chart's stable revision loads ``@champion``: the controller pins it to the alias's version.

    The InferenceService lives in a stand-in API server (tests/support/kube_api.py, CRD-validated), the alias
    in a real MLflow registry. No alias yet (fresh install): no patch, retried; once it exists: one pin,
    audited; the alias moving later changes nothing (the revision names a version); a canary is never pinned
    over.
    """
    from mlflow import MlflowClient
    from test_rollout_backend import ISVC, NS, _container, isvc

    from relearn.rollout.kubernetes_backend import ANN_CANARY, ANN_STABLE, ANN_STABLE_URI, KubernetesBackend
    from support.kube_api import MERGE, FakeApiServer

    path = f"{ISVC}/relearn-fraud"
    cfg = ControllerSettings(namespace=NS, audit_log=tmp_path / "audit.jsonl", interval_seconds=0)
    dead = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    registry = MlflowRegistry(settings)
    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with FakeApiServer({path: isvc("relearn-fraud", "models:/relearn-fraud@champion")}) as api:
        backend = KubernetesBackend(NS, "relearn-fraud", api_client=api.api_client())

        def once() -> None:
            run(cfg, backend=backend, prometheus=dead, registry=registry, max_iterations=1)

        once()
        assert api.patches() == [], "no model registered yet: nothing to pin"
        assert AuditLog(cfg.audit_log).entries() == []

        register_versions(client, settings, 2, champion="2")
        once()
        [patch] = api.patches()
        assert patch["path"] == path and patch["content_type"] == MERGE
        assert patch["body"] == {
            "spec": {"predictor": {"containers": [_container("models:/relearn-fraud/2")]}},
            "metadata": {"annotations": {ANN_STABLE: "2", ANN_STABLE_URI: "models:/relearn-fraud/2"}},
        }
        assert api.rejected == []
        [entry] = AuditLog(cfg.audit_log).entries()
        assert entry["action"] == "pin-stable" and entry["version"] == "2" and entry["alias"] == "champion"
        assert entry["state"]["stable"] == "2"

        client.set_registered_model_alias(settings.model_name, "champion", "1")
        once()
        assert len(api.patches()) == 1, "a pinned revision stays pinned when the alias moves"
        assert backend.state().stable == "2"

        # A canary over a stable revision that still loads the alias: no pin while it runs.
        api.objects[path] = isvc("relearn-fraud", "models:/relearn-fraud@champion")
        backend.start_canary("2", 10)
        once()
        assert [p["body"].get("metadata") for p in api.patches()[1:]] == [
            {
                "annotations": {
                    ANN_CANARY: "2",
                    ANN_STABLE: "champion",
                    ANN_STABLE_URI: "models:/relearn-fraud@champion",
                }
            }
        ], "only the canary start was patched"


def test_once_prints_what_it_decided(tmp_path: Path) -> None:
    """``--once`` used to print nothing: it prints each decision and its reason."""
    import os
    import sys

    from relearn.rollout.analysis import Decision

    backend = LocalBackend(tmp_path / "s.json")
    for version in ("1", "2"):
        backend.register(version, rest="http://127.0.0.1:9", grpc="127.0.0.1:9")
    backend.start_canary("2", 10)
    cmd = [sys.executable, "-m", "relearn.rollout.controller", "--backend", "local", "--once"]
    cmd += ["--state", str(tmp_path / "s.json"), "--audit-log", str(tmp_path / "a.jsonl")]
    cmd += ["--prometheus-url", "http://127.0.0.1:9"]  # nothing listens: no metrics, so hold
    env = {**os.environ, "RELEARN_HOME": str(tmp_path / "home")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=True).stdout
    assert out.startswith("hold: no metrics: ")
    assert Decision(Action.HOLD, None).summary().startswith("hold: nothing to analyse")
    assert Decision(Action.STEP, 25).summary() == "step: all gates passed, canary at 25%"
