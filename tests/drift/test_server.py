"""A real detector process on loopback, fed with KServe-format CloudEvents built by the cloudevents SDK."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from drift_events import kserve_event, transaction_events

from conftest import WINDOW, Server, get_json, scenario_stream
from relearn.events import REQUEST_TYPE
from relearn.features.spec import MODEL_INPUTS


def post(url: str, headers: dict, body: bytes, timeout: float = 10.0) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("server")
    reference, _, _ = scenario_stream("covariate_shift")
    reference_file = tmp_path / "reference.parquet"
    reference[[*MODEL_INPUTS, "score"]].to_parquet(reference_file, index=False)
    srv = Server(tmp_path / "data", reference_file, cooldown_s="3600")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_covariate_shift_detected_after_onset_via_cloudevents(server):
    _, before, after = scenario_stream("covariate_shift")
    rows = [before.iloc[: 2 * WINDOW], after.iloc[: 2 * WINDOW]]
    with ThreadPoolExecutor(8) as pool:  # phases in order; within one, requests before their responses
        for part, frame in enumerate(rows):
            events = list(transaction_events(frame, f"p{part}"))
            for half in (events[0::2], events[1::2]):
                codes = list(pool.map(lambda e: post(server.url, *e), half))
                assert set(codes) == {202}
    status = server.wait_processed(lambda s: len(s["windows"]["stable"]) >= 4)
    verdicts = [w["drift"] for w in status["windows"]["stable"]]
    assert verdicts[:2] == [False, False] and any(verdicts[2:4]), verdicts
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    assert 'relearn_drift_detected_total{kind="features",track="stable"}' in metrics
    assert 'relearn_drift_events_ingested_total{track="stable",type="request"} 4000.0' in metrics
    assert 'relearn_drift_triggers_total{result="fired"} 1.0' in metrics


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"content-type": "application/json"}, b"{}", "malformed_event"),
        ({"ce-type": "org.example.other"}, b"{}", "unknown_type"),
        ({}, b"not json", "bad_json"),
        ({}, json.dumps({"instances": [{"foo": 1}]}).encode(), "feature_mismatch"),
    ],
)
def test_bad_input_is_4xx_counted_and_server_keeps_serving(server, headers, body, reason):
    good_headers, _ = kserve_event("x-1", REQUEST_TYPE, {"instances": []})
    sent = {**good_headers, **headers} if headers.get("ce-type") or not headers else headers
    assert 400 <= post(server.url, sent, body) < 500
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    assert f'relearn_drift_events_rejected_total{{reason="{reason}"}} 1.0' in metrics
    assert get_json(server.url + "/ready")["ready"]


def test_kill_9_and_restart_loses_no_accepted_event(tmp_path, reference_file):
    _, before, _ = scenario_stream("none")
    events = list(transaction_events(before.iloc[:1500], "k"))
    srv = Server(tmp_path / "data", reference_file)
    acked: list[int] = []
    try:
        srv.wait_ready()

        def sender(offset: int) -> None:
            for headers, body in events[offset::4]:
                try:
                    if post(srv.url, headers, body, timeout=2) == 202:
                        acked.append(1)
                except OSError:
                    return

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        srv.kill()
        for t in threads:
            t.join(timeout=30)
    finally:
        srv.stop()
    assert 0 < len(acked) < len(events)
    restarted = Server(tmp_path / "data", reference_file)
    try:
        restarted.wait_ready()
        status = restarted.wait_processed(lambda s: s["processed_seq"] >= len(acked))
        assert status["processed_seq"] >= len(acked)  # every acknowledged event is in the log
    finally:
        restarted.stop()
