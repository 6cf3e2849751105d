"""Retention of the inference log: by age, by size, never what the monitor has not read; a real detector
under a sustained load many times its size limit stays within it."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest
from drift_events import transaction_events

from conftest import Server, scenario_stream
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring import store
from relearn.monitoring.payloads import BATCH
from relearn.monitoring.retention import Policy, enforce, used_bytes

NOW = 1_800_000_000.0
DAY = 86400.0


def log_with(tmp_path, n: int, received: float, body: bytes = b"{}", window_start: int = 10**9):
    """A log of ``n`` events received at ``received`` (+ i ms), the monitor's window at ``window_start``."""
    conn = store.connect(tmp_path / "log.sqlite3")
    with conn:
        conn.executemany(
            "INSERT INTO events (ce_id, type, track, time, received, body) "
            "VALUES (?, 't', 'stable', '', ?, ?)",
            [(f"e{i}", received + i / 1000, body) for i in range(n)],
        )
    store.set_state(conn, [("window_start:stable", str(window_start))])
    return conn


def policy(max_age_s=DAY, max_bytes=10**12, predictions_max_age_s=10 * DAY, lookback=0) -> Policy:
    return Policy(max_age_s, max_bytes, predictions_max_age_s, lookback)


def test_old_events_predictions_and_labels_go_new_ones_stay(tmp_path):
    conn = log_with(tmp_path, 100, NOW - 2 * DAY)
    conn.executemany(
        "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, 't', 'stable', '', ?, '')",
        [(f"new{i}", NOW - 60) for i in range(7)],
    )
    with conn:
        conn.executemany(
            "INSERT INTO predictions VALUES (?, 'stable', ?, 0.5, '1')",
            [("old", NOW - 11 * DAY), ("kept", NOW - 9 * DAY)],
        )
        conn.executemany(
            "INSERT INTO labels VALUES (?, 1, ?, ?)", [("old", 0, NOW - 11 * DAY), ("kept", 0, NOW - DAY)]
        )
    deleted = enforce(conn, policy(), now=NOW)
    assert deleted == {("events", "age"): 100, ("predictions", "age"): 1, ("labels", "age"): 1}
    assert [r[0] for r in conn.execute("SELECT ce_id FROM events")] == [f"new{i}" for i in range(7)]
    assert [r[0] for r in conn.execute("SELECT transaction_id FROM predictions")] == ["kept"]
    assert enforce(conn, policy(), now=NOW) == {}  # idempotent


def test_events_the_monitor_has_not_read_are_kept_whatever_their_age_or_size(tmp_path):
    conn = log_with(tmp_path, 100, NOW - 2 * DAY, body=b"x" * 4000, window_start=41)
    deleted = enforce(conn, policy(max_bytes=1, lookback=10), now=NOW)
    assert deleted == {("events", "age"): 30, ("events", "unread"): 1}  # seq 1..30 (41 - the lookback)
    assert store.count_events(conn) == 70


def test_size_limit_deletes_the_oldest_first(tmp_path):
    conn = log_with(tmp_path, 3000, NOW, body=b"x" * 2000)  # ~6.5 MB
    limit = 2 * 2**20
    deleted = enforce(conn, policy(max_bytes=limit), now=NOW)
    assert 0.8 * limit <= used_bytes(conn) <= limit and 0 < deleted[("events", "size")] < 3000
    first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
    assert first == deleted[("events", "size")] + 1  # the oldest went


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def batches(events: list, size: int) -> list[bytes]:
    """Binary-mode events as CloudEvents batches (structured envelopes): many events per POST."""
    envelopes = [
        {**{k[3:]: v for k, v in headers.items() if k.startswith("ce-")}, "data": json.loads(body)}
        for headers, body in events
    ]
    return [json.dumps(envelopes[i : i + size]).encode() for i in range(0, len(envelopes), size)]


@pytest.mark.slow
def test_a_detector_under_load_stays_within_its_size_limit(tmp_path):
    """The monitor re-reads 5,000 events on a restart (PENDING_LOOKBACK), which retention keeps: the limit
    here is a few times that; a deployment's is gigabytes."""
    reference, before, after = scenario_stream("covariate_shift")
    reference_file = tmp_path / "reference.parquet"
    reference[[*MODEL_INPUTS, "score"]].to_parquet(reference_file, index=False)
    limit = 6 * 2**20
    options = {"log_max_bytes": str(limit), "retention_interval_s": "0.3", "reports": "false"}
    server = Server(tmp_path / "data", reference_file, **options)
    db = tmp_path / "data" / "inference-log.sqlite3"
    peak, sent = 0, 0
    try:
        server.wait_ready()
        for part, rows in (("before", before), ("after", after)):
            for body in batches(list(transaction_events(rows, part)), 200):
                request = urllib.request.Request(
                    server.url + "/", data=body, headers={"content-type": BATCH}, method="POST"
                )
                assert urllib.request.urlopen(request, timeout=30).status == 202
                sent += len(body)
                peak = max(peak, os.path.getsize(db))
        deadline = time.monotonic() + 30
        while metric(server.url, "relearn_drift_log_bytes") > limit and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(server.url, "relearn_drift_log_bytes") <= limit
        assert metric(server.url, "relearn_drift_log_deleted_rows_total") > 0
    finally:
        server.stop()
    print(f"sent {sent / 2**20:.1f} MiB; log file peak {peak / 2**20:.1f} MiB, limit {limit / 2**20} MiB")
    assert sent > 4 * limit, sent  # the load was several times the limit
    # The file stops growing (freed pages are reused); above the limit by what one retention interval and
    # the monitor's unread events hold at this rate (batched POSTs as fast as the detector takes them).
    assert peak <= 2 * limit, (peak, limit)


@pytest.mark.slow
def test_a_request_without_its_response_expires_after_the_ttl(tmp_path, reference_file):
    from drift_events import kserve_event, v1_request

    from relearn.events import REQUEST_TYPE

    server = Server(tmp_path / "data", reference_file, pending_ttl_s="1")
    _, rows, _ = scenario_stream("covariate_shift")
    try:
        server.wait_ready()
        for i in range(3):  # responses never come; the third is read 2 s after the first two
            headers, body = kserve_event(f"lonely-{i}", REQUEST_TYPE, v1_request(rows.iloc[i]))
            request = urllib.request.Request(server.url + "/", data=body, headers=headers, method="POST")
            assert urllib.request.urlopen(request, timeout=10).status == 202
            time.sleep(2.0 if i == 1 else 0.0)
        deadline = time.monotonic() + 20
        while metric(server.url, "relearn_drift_pending_dropped_total") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(server.url, "relearn_drift_pending_dropped_total") == 2
    finally:
        server.stop()
