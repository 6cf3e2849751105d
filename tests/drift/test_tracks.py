"""The track of a request/response pair: a stable-headed response from a non-stable version is canary.

In a cluster a KServe canary revision logs with the stable's settings (``ce-endpoint: default``), so only
the response's ``model_version`` tells canary traffic apart. A real detector process is fed KServe-format
CloudEvents; every event here says ``ce-endpoint: default``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from drift_events import kserve_event, transaction_events
from test_reference import MODEL, champion_detector, reference_version
from test_rollout_endpoints import predictor_request, predictor_response
from test_server import post

from conftest import Server, get_json, scenario_labels, scenario_stream
from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.features.spec import MODEL_INPUTS

SHADOW = "fraud-shadow"
WINDOW = 500  # rows per window: a covariate-shifted window of 500 drifts, a stationary one does not


def post_all(url: str, events: list) -> None:
    """Post request events first, then their responses (8 at a time), as a busy logger may."""
    with ThreadPoolExecutor(8) as pool:
        for half in (events[0::2], events[1::2]):
            assert set(pool.map(lambda e: post(url, *e), half)) == {202}


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return response.read().decode()


def predictions(data_dir: Path) -> dict[str, tuple[str, str]]:
    """``transaction id → (track, version)`` of the detector's stored predictions."""
    with sqlite3.connect(data_dir / "inference-log.sqlite3") as conn:
        rows = conn.execute("SELECT transaction_id, track, version FROM predictions").fetchall()
    return {tid: (track, version) for tid, track, version in rows}


def reference_file(tmp_path: Path) -> Path:
    reference, _, _ = scenario_stream("covariate_shift")
    path = tmp_path / "reference.parquet"
    reference[[*MODEL_INPUTS, "score"]].to_parquet(path, index=False)
    return path


def test_canary_by_version_has_its_own_drift_windows_and_label_gates(tmp_path):
    """Stable v5 serves stationary traffic, canary v4 covariate-shifted traffic, all under one endpoint."""
    _, before, after = scenario_stream("covariate_shift")
    stable, canary = before.iloc[:WINDOW], after.iloc[:WINDOW]
    srv = Server(
        tmp_path / "data",
        reference_file(tmp_path),
        stable_version="5",
        window_size=str(WINDOW),
        reports="false",
    )
    try:
        srv.wait_ready()
        # Phase 1 holds every stable pair and half the canary's, so the stable window closes first and
        # the canary window's score divergence has a stable window to compare with.
        stable_events = list(transaction_events(stable, "s", version="5"))
        canary_events = list(transaction_events(canary, "c", version="4"))
        half = WINDOW  # events of WINDOW / 2 pairs
        post_all(srv.url, stable_events + canary_events[:half])
        post_all(srv.url, canary_events[half:])
        status = srv.wait_processed(lambda s: s["windows"]["canary"] and s["windows"]["stable"])
        assert [w["drift"] for w in status["windows"]["stable"]] == [False]
        assert [w["drift"] for w in status["windows"]["canary"]] == [True]
        assert status["windows"]["canary"][0]["size"] == WINDOW
        assert status["open"] == {"stable": 0, "canary": 0, "shadow": 0}
        metrics = metrics_text(srv.url)
        assert 'relearn_drift_score_divergence{track="canary"}' in metrics
        assert 'relearn_drift_detected_total{kind="features",track="canary"} 1.0' in metrics
        assert 'relearn_drift_detected_total{kind="features",track="stable"}' not in metrics
        # The log keeps the headers' track: every event came in as stable.
        assert 'relearn_drift_events_ingested_total{track="stable",type="response"} 1000.0' in metrics

        # Labels join the predictions of the pair's track: v4's quality is the canary's.
        sent = set(stable["transaction_id"]) | set(canary["transaction_id"])
        chargebacks = scenario_labels("covariate_shift")
        frauds = sorted(set(chargebacks["transaction_id"]) & sent)
        now = datetime.now(UTC).isoformat()
        records = [{"transaction_id": t, "chargeback_timestamp": now} for t in frauds] or [
            {"transaction_id": sorted(sent)[0], "is_fraud": False, "chargeback_timestamp": now}
        ]
        request = urllib.request.Request(
            f"{srv.url}/labels", json.dumps(records).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        status = srv.wait_processed(lambda s: len(s["versions"]) >= 2)
        versions = {(v["track"], v["model_version"]): v["n"] for v in status["versions"]}
        assert versions == {("stable", "5"): WINDOW, ("canary", "4"): WINDOW}
        metrics = metrics_text(srv.url)
        assert 'relearn_drift_version_precision_at_budget{model_version="4",track="canary"}' in metrics
        assert 'model_version="4",track="stable"' not in metrics
    finally:
        srv.stop()
    stored = predictions(tmp_path / "data")
    assert {stored[t] for t in canary["transaction_id"]} == {("canary", "4")}
    assert {stored[t] for t in stable["transaction_id"]} == {("stable", "5")}


def open_windows(tmp_path: Path, events: list, **options: str) -> dict[str, int]:
    """Rows per track in the open windows after a detector on the reference file read ``events``."""
    options = {"window_size": "100000", "reports": "false", **options}
    srv = Server(tmp_path / "data", reference_file(tmp_path), **options)
    try:
        srv.wait_ready()
        post_all(srv.url, events)
        return srv.wait_processed(lambda s: s["processed_seq"] >= len(events))["open"]
    finally:
        srv.stop()


def test_without_a_stable_version_tracks_come_from_the_headers(tmp_path):
    """A reference file and no ``stable_version``: the stable version is unknown, v4 stays stable."""
    _, before, _ = scenario_stream("covariate_shift")
    events = [
        *transaction_events(before.iloc[:60], "s", version="5"),
        *transaction_events(before.iloc[60:120], "c", version="4"),
    ]
    assert open_windows(tmp_path, events) == {"stable": 120, "canary": 0, "shadow": 0}
    assert {track for track, _ in predictions(tmp_path / "data").values()} == {"stable"}


def test_the_version_wins_over_a_canary_endpoint(tmp_path):
    """A revision rendered as the canary keeps ``ce-endpoint: canary`` after its promotion: v5 is stable."""
    _, before, _ = scenario_stream("covariate_shift")
    events = [
        *transaction_events(before.iloc[:60], "promoted", endpoint="canary", version="5"),
        *transaction_events(before.iloc[60:100], "next", endpoint="canary", version="6"),
        *transaction_events(before.iloc[100:120], "unversioned", endpoint="canary"),
    ]
    assert open_windows(tmp_path, events, stable_version="5") == {"stable": 60, "canary": 60, "shadow": 0}


def send_request(url: str, ce_id: str, rng: np.random.Generator, service: str = "fraud") -> None:
    headers, body = kserve_event(ce_id, REQUEST_TYPE, predictor_request(ce_id, rng), service=service)
    assert post(url, headers, body) == 202


def send_response(url: str, ce_id: str, version: str, score: float = 0.5, service: str = "fraud") -> None:
    headers, body = kserve_event(
        ce_id, RESPONSE_TYPE, predictor_response(ce_id, score, version), service=service
    )
    assert post(url, headers, body) == 202


def send_pairs(url: str, prefix: str, n: int, version: str, rng, service: str = "fraud") -> None:
    for i in range(n):
        send_request(url, f"{prefix}-{i}", rng, service)
        send_response(url, f"{prefix}-{i}", version, service=service)


def test_restart_keeps_requests_logged_before_the_resume_point(tmp_path):
    """Requests logged before every track's open window, their responses after a kill -9 and restart.

    The restarted monitor resumes at the earliest open window's first event; the held requests lie before
    it, so it must read them again to pair their responses.
    """
    options = dict(
        stable_version="5",
        shadow_service=SHADOW,
        key_by_request_id="true",
        window_size="50",
        reports="false",
    )
    rng = np.random.default_rng(3)
    srv = Server(tmp_path / "data", reference_file(tmp_path), **options)
    try:
        srv.wait_ready()
        for round_ in range(2):  # each round closes one window per track
            if round_ == 1:
                for i in range(10):
                    send_request(srv.url, f"held-{i}", rng)
            send_pairs(srv.url, f"s{round_}", 50, "5", rng)
            send_pairs(srv.url, f"c{round_}", 50, "4", rng)
            send_pairs(srv.url, f"h{round_}", 50, "6", rng, service=SHADOW)
        status = srv.wait_processed(lambda s: all(len(w) == 2 for w in s["windows"].values()))
        assert status["open"] == {"stable": 0, "canary": 0, "shadow": 0}
        srv.kill()
    finally:
        srv.stop()
    restarted = Server(tmp_path / "data", reference_file(tmp_path), **options)
    try:
        restarted.wait_ready()
        for i in range(10):
            send_response(restarted.url, f"held-{i}", "5")
        last = 2 * (3 * 2 * 50 + 10)
        status = restarted.wait_processed(lambda s: s["processed_seq"] >= last)
        assert status["open"] == {"stable": 10, "canary": 0, "shadow": 0}
    finally:
        restarted.stop()
    stored = predictions(tmp_path / "data")
    assert {stored.get(f"held-{i}") for i in range(10)} == {("stable", "5")}


def test_a_promotion_is_followed_within_seconds_not_at_the_next_alias_poll(tmp_path, monkeypatch):
    """The champion alias moves v1 → v2; the alias poll is hourly, yet v2's responses turn stable."""
    import mlflow

    srv, tracking_uri, v1, v2 = champion_detector(
        tmp_path, monkeypatch, reference_poll_s="3600", key_by_request_id="true", window_size="100000"
    )
    rng = np.random.default_rng(4)
    try:
        srv.wait_ready()
        send_pairs(srv.url, "before-v1", 1, v1, rng)
        send_pairs(srv.url, "before-v2", 1, v2, rng)  # v2 is not the champion (yet): canary traffic
        mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(MODEL, "champion", v2)
        moved = time.monotonic()
        i = 0
        while reference_version(srv.url) != float(v2) and time.monotonic() - moved < 30:
            send_pairs(srv.url, f"promoted-{i}", 1, v2, rng)
            i += 1
            time.sleep(0.25)
        # A forced alias check is at most every 5 s (monitor.CHAMPION_RECHECK_S); the poll is hourly.
        assert reference_version(srv.url) == float(v2), "no reload within 30 s"
        send_pairs(srv.url, "after-v2", 1, v2, rng)
        send_pairs(srv.url, "after-v1", 1, v1, rng)  # the old champion's late responses: not stable
        srv.wait_processed(lambda s: s["processed_seq"] >= 2 * (4 + i))
        assert get_json(srv.url + "/ready")["reference"] == v2
    finally:
        srv.stop()
    stored = predictions(tmp_path / "data")
    assert stored["before-v1-0"] == ("stable", v1)
    assert stored["before-v2-0"] == ("canary", v2)
    assert stored["after-v2-0"] == ("stable", v2)
    assert stored["after-v1-0"] == ("canary", v1)
