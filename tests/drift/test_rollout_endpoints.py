"""What the rollout controller reads from a real detector: the shadow comparison and per-version quality.

``GET /v1/shadow`` joins the shadow's and stable's logged predictions of the same requests (the controller
cannot open the log in a cluster); the per-version gauges feed the controller's label gates. Events are
KServe-format CloudEvents posted to the live server, with the bodies the predictor logs (v2 ``numeric`` /
``categorical`` tensors, the response naming its ``model_version``).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from datetime import UTC, datetime

import numpy as np
import pytest
from drift_events import kserve_event
from test_server import post

from conftest import Server, get_json, scenario_stream
from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.monitoring import served, store
from relearn.rollout.shadow import ShadowSettings, detector_comparison, shadow_ready

SHADOW = "fraud-shadow"
N = 120
SENT = [0]  # events posted to the module's server (its log's last sequence number)


def predictor_request(ce_id: str, rng: np.random.Generator) -> dict:
    """The v2 request body the predictor logs (relearn.serving.tensors.v2_json): no transaction_id."""
    numeric = rng.uniform(0, 3, len(NUMERIC_INPUTS)).round(3).tolist()
    categorical = ["grocery", "pos", "DE", "EUR", "13"]
    assert len(categorical) == len(CATEGORICAL_INPUTS)
    return {
        "id": ce_id,
        "inputs": [
            {"name": "numeric", "datatype": "FP32", "shape": [1, len(numeric)], "data": numeric},
            {"name": "categorical", "datatype": "BYTES", "shape": [1, 5], "data": categorical},
        ],
    }


def predictor_response(ce_id: str, score: float, version: str) -> dict:
    return {
        "id": ce_id,
        "model_name": "fraud",
        "model_version": version,
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [1], "data": [score]},
            {"name": "decision", "datatype": "BOOL", "shape": [1], "data": [score >= 0.5]},
        ],
    }


def send(url: str, ce_id: str, score: float, version: str, rng, endpoint="default", service="fraud") -> None:
    for kind, body in (
        (REQUEST_TYPE, predictor_request(ce_id, rng)),
        (RESPONSE_TYPE, predictor_response(ce_id, score, version)),
    ):
        headers, data = kserve_event(ce_id, kind, body, endpoint, service)
        assert post(url, headers, data) == 202, (kind, body)
        SENT[0] += 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout-endpoints")
    reference, _, _ = scenario_stream("covariate_shift")
    reference[[*MODEL_INPUTS, "score"]].to_parquet(tmp / "reference.parquet", index=False)
    srv = Server(
        tmp / "data",
        tmp / "reference.parquet",
        window_size="1000000",  # no drift windows close: these tests are about joins and labels
        shadow_service=SHADOW,
        key_by_request_id="true",
        alert_budget="0.1",
        reports="false",
    )
    srv.db = tmp / "data" / "inference-log.sqlite3"
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_shadow_comparison_endpoint_joins_by_request_and_version(server):
    rng = np.random.default_rng(0)
    stable = np.where(rng.random(N) < 0.5, rng.uniform(0.0, 0.4, N), rng.uniform(0.6, 1.0, N)).round(4)
    shadow = stable.copy()
    shadow[:6] = 1.0 - shadow[:6]  # 6 of 120 decisions differ: agreement 0.95
    for i in range(N):
        send(server.url, f"req-{i}", float(stable[i]), "1", rng)
        send(server.url, f"req-{i}", float(shadow[i]), "2", rng, service=SHADOW)
    for i in range(40):  # an earlier shadow (version 7) on other requests: disagrees everywhere
        send(server.url, f"old-{i}", 0.1, "1", rng)
        send(server.url, f"old-{i}", 0.9, "7", rng, service=SHADOW)

    result = get_json(f"{server.url}/v1/shadow?version=2&threshold=0.5")
    assert result["pairs"] == N and result["version"] == "2"
    assert result["agreement"] == pytest.approx(0.95)
    assert result["mean_abs_diff"] == pytest.approx(np.abs(stable - shadow).mean(), rel=1e-4)
    everything = get_json(f"{server.url}/v1/shadow")
    assert everything["pairs"] == N + 40 and everything["agreement"] == pytest.approx((N - 6) / (N + 40))

    # What the controller does with it (relearn.rollout.controller.shadow_source, detector_url set).
    comparison = detector_comparison(server.url, "2", ShadowSettings(min_pairs=100))
    assert comparison.pairs == N and comparison.agreement == pytest.approx(0.95)
    assert shadow_ready(comparison, ShadowSettings(min_pairs=100, min_agreement=0.95, max_ks=1.0))[0]
    ready, reason = shadow_ready(comparison, ShadowSettings(min_pairs=100, min_agreement=0.98))
    assert not ready and "agreement 0.95 < 0.98" in reason
    nothing = detector_comparison(server.url, "9")  # a version that never ran: no pairs, values null
    assert nothing.pairs == 0 and np.isnan(nothing.agreement)


def test_shadow_endpoint_rejects_bad_queries(server):
    for query in ("threshold=high", "key=user_id", "limit=0"):
        try:
            urllib.request.urlopen(f"{server.url}/v1/shadow?{query}", timeout=5)
        except urllib.error.HTTPError as error:
            assert error.code == 400 and json.loads(error.read())["error"] == "bad_query"
        else:
            pytest.fail(f"{query} accepted")


def test_labels_give_per_version_precision_for_the_label_gates(server):
    """Stable v5 ranks the frauds first, canary v4 (its scores reversed) last: its precision collapses."""
    rng = np.random.default_rng(1)
    frauds = []
    for i in range(200):
        fraud = i % 20 in (0, 5)  # 10 % of each version's requests: the alert budget
        score = 0.95 if fraud else float(rng.uniform(0.0, 0.5))
        tid = f"tx-{i}"  # the request id is the transaction id (key_by_request_id)
        if i % 2:
            send(server.url, tid, 1.0 - score, "4", rng, endpoint="canary")
        else:
            send(server.url, tid, score, "5", rng)
        if fraud:
            frauds.append(tid)
    server.wait_processed(lambda s: s["processed_seq"] >= SENT[0])
    now = datetime.now(UTC).isoformat()
    records = [{"transaction_id": t, "chargeback_timestamp": now} for t in frauds]
    request = urllib.request.Request(
        f"{server.url}/labels", json.dumps(records).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    status = server.wait_processed(lambda s: any(v["model_version"] == "4" for v in s["versions"]))
    versions = {(v["track"], v["model_version"]): v for v in status["versions"]}
    canary, stable = versions[("canary", "4")], versions[("stable", "5")]
    assert canary["n"] == stable["n"] == 100 and canary["positives"] == stable["positives"] == 10
    assert canary["precision"] == canary["recall"] == 0.0
    assert stable["precision"] == stable["recall"] == 1.0
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    assert 'relearn_drift_version_precision_at_budget{model_version="4",track="canary"} 0.0' in metrics
    assert 'relearn_drift_version_labelled_predictions{model_version="4",track="canary"} 100.0' in metrics
    assert 'relearn_drift_version_precision_at_budget{model_version="5",track="stable"} 1.0' in metrics
    # the trials of the label gates' tests: 10 % of 100 reviewed, 10 frauds
    assert 'relearn_drift_version_reviewed_predictions{model_version="4",track="canary"} 10.0' in metrics
    assert 'relearn_drift_version_frauds{model_version="4",track="canary"} 10.0' in metrics


def post_chargebacks(url: str, transaction_ids: list[str]) -> None:
    now = datetime.now(UTC).isoformat()
    records = [{"transaction_id": t, "chargeback_timestamp": now} for t in transaction_ids]
    request = urllib.request.Request(
        f"{url}/labels", json.dumps(records).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def test_backtest_endpoints_page_what_the_log_file_holds(server):
    """``GET /v1/backtest/inputs`` pages the served model inputs, ``/labels`` the matured labels: the same
    rows the controller reads from the file in local mode (:mod:`relearn.monitoring.served`)."""
    rng = np.random.default_rng(2)
    for i in range(30):
        send(server.url, f"bt-{i}", 0.2, "5", rng)
    server.wait_processed(lambda s: s["processed_seq"] >= SENT[0])
    pages, after, more = [], 0, True
    while more:
        page = get_json(f"{server.url}/v1/backtest/inputs?after={after}&limit=7")
        pages.append(page)
        after, more = page["after"], page["more"]
    inputs = {key: row for page in pages for key, row in page["inputs"].items()}
    assert len(pages) > 2 and {f"bt-{i}" for i in range(30)} <= set(inputs)
    assert all(list(row) == list(MODEL_INPUTS) for row in inputs.values())
    conn = served.open_read_only(server.db)
    try:
        assert inputs == served.served_inputs(conn, 0.0, 0, 100_000)[0]
    finally:
        conn.close()

    post_chargebacks(server.url, ["bt-3"])
    labels = get_json(f"{server.url}/v1/backtest/labels")
    deadline = time.monotonic() + 30
    while labels["labels"].get("bt-3") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        labels = get_json(f"{server.url}/v1/backtest/labels")
    assert labels["labels"]["bt-3"] == 1 and labels["labels"]["bt-4"] == 0
    later = get_json(f"{server.url}/v1/backtest/labels?since={time.time() + 60}")
    assert later["labels"] == {}, "nothing was served after since"


@pytest.mark.parametrize(
    "query", ["labels?since=nan", "labels?limit=0", "inputs?after=-1", "labels?maturity_seconds=soon"]
)
def test_backtest_endpoints_reject_bad_queries(server, query):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.url}/v1/backtest/{query}", timeout=5)
    assert error.value.code == 400 and json.loads(error.value.read())["error"] == "bad_query"


def test_logs_from_before_model_versions_are_migrated(tmp_path):
    """An inference log with the old one-prediction-per-transaction table opens with its rows kept."""
    path = tmp_path / "inference-log.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE predictions (transaction_id TEXT PRIMARY KEY, track TEXT NOT NULL, "
        "time REAL NOT NULL, score REAL NOT NULL)"
    )
    old.execute("INSERT INTO predictions VALUES ('t1', 'stable', 1.0, 0.25)")
    old.commit()
    old.close()
    conn = store.connect(path)
    assert conn.execute("SELECT * FROM predictions").fetchall() == [("t1", "stable", 1.0, 0.25, None)]
    with conn:  # the same transaction scored by a shadow
        conn.execute("INSERT INTO predictions VALUES ('t1', 'shadow', 1.0, 0.5, '2')")
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 2
    conn.close()
    assert store.connect(path).execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 2
