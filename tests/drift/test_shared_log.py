"""Several detector replicas on a real PostgreSQL: ingest replicas share a log, the one monitor relays it.

Every event reaches the monitor once (across replicas, across a crash between the relay's two commits),
a request and its response posted to two replicas still pair, and a second monitor does not relay.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
from drift_events import kserve_event, transaction_events

from conftest import WINDOW, Server, get_json, scenario_stream
from relearn.events import REQUEST_TYPE
from relearn.monitoring import store
from relearn.monitoring.payloads import Event
from relearn.monitoring.shared_log import TABLE, Relay, SharedEventLog

pytest.importorskip("psycopg2")


def post(url: str, headers: dict, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), {}
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")


@pytest.fixture
def shared_log(postgres_server, request) -> str:
    """A fresh database per test: the libpq URL of the replicas' shared log."""
    name = f"log_{request.node.name.lower()[:40]}"
    postgres_server.create_database(name)
    return f"postgresql://{postgres_server.superuser}@127.0.0.1:{postgres_server.port}/{name}"


def _rows(url: str) -> int:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
        return int(cur.fetchone()[0])


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_two_ingest_replicas_feed_one_monitor_each_event_once(tmp_path, reference_file, shared_log):
    """Requests go to replica A, their responses to replica B (KServe's logger posts them apart)."""
    replicas = [
        Server(tmp_path / f"ingest{i}", None, role="ingest", shared_log_url=shared_log) for i in (0, 1)
    ]
    monitor = Server(tmp_path / "monitor", reference_file, shared_log_url=shared_log)
    try:
        for server in (*replicas, monitor):
            server.wait_ready()
        shards = {get_json(r.url + "/ready")["shard"] for r in replicas}
        assert len(shards) == 2
        _, before, _ = scenario_stream("covariate_shift")
        events = list(transaction_events(before.iloc[: WINDOW + 300], "pair"))
        requests, responses = events[0::2], events[1::2]
        # half the responses are posted before their requests: the monitor holds them
        for response in responses[: len(responses) // 2]:
            assert post(replicas[1].url, *response)[0] == 202
        for request in requests:
            assert post(replicas[0].url, *request)[0] == 202
        for response in responses[len(responses) // 2 :]:
            assert post(replicas[1].url, *response)[0] == 202
        status = monitor.wait_processed(
            lambda s: len(s["windows"]["stable"]) == 1 and s["open"]["stable"] == 300, timeout=90
        )
        assert status["windows"]["stable"][0]["size"] == WINDOW
        assert _metric(monitor.url, "relearn_drift_relayed_events_total") == len(events)
        assert _metric(monitor.url, "relearn_drift_relay_leader") == 1
        assert _rows(shared_log) == 0  # relayed rows are deleted
        log = sqlite3.connect(tmp_path / "monitor" / "inference-log.sqlite3")
        assert log.execute("SELECT COUNT(*), COUNT(DISTINCT ce_id || type) FROM events").fetchone() == (
            len(events),
            len(events),
        )
        # an ingest replica takes events only, and says where the rest is
        code, body = post(replicas[0].url + "/labels", {"content-type": "application/json"}, b"[]")
        assert code == 404 and body["error"] == "not_on_ingest_replica" and "role all" in body["detail"]
        # a bad event is refused by the replica, naming the problem, and never reaches the log
        bad = kserve_event("bad", REQUEST_TYPE, {"instances": [{"foo": 1}]})
        code, body = post(replicas[0].url, *bad)
        assert code == 400 and "feature" in json.dumps(body)
        assert _rows(shared_log) == 0
    finally:
        for server in (*replicas, monitor):
            server.stop()


def _events(prefix: str, n: int) -> list[Event]:
    body = json.dumps({"predictions": [0.5]}).encode()
    return [
        Event(f"{prefix}-{i}", "org.kubeflow.serving.inference.response", "stable", "t", body)
        for i in range(n)
    ]


def test_relay_is_exactly_once_across_a_crash_between_its_commits(tmp_path, shared_log):
    """The rows a crash left in PostgreSQL after the local commit are skipped: the cursors cover them."""
    import psycopg2

    writer = SharedEventLog(shared_log, shard="replica-a")
    asyncio.run(writer.append_many(_events("a", 30)))
    local = store.connect(tmp_path / "log.sqlite3")
    relay = Relay(shared_log, local, batch=20)
    with psycopg2.connect(shared_log) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {TABLE} ORDER BY seq")
        before_crash = cur.fetchall()
    assert relay.step() == 20 and relay.step() == 10 and relay.step() == 0
    with psycopg2.connect(shared_log) as conn, conn.cursor() as cur:  # as if both DELETEs never committed
        cur.executemany(f"INSERT INTO {TABLE} VALUES ({', '.join(['%s'] * 8)})", before_crash)
    assert relay.step() == 0 and relay.step() == 0
    assert _rows(shared_log) == 0
    asyncio.run(writer.append_many(_events("b", 5)))  # the replica goes on: its new rows do come
    assert relay.step() == 5
    assert local.execute("SELECT COUNT(*), COUNT(DISTINCT ce_id) FROM events").fetchone() == (35, 35)
    writer.close()
    relay.close()


def test_a_second_monitor_waits_for_the_relay_lock(tmp_path, shared_log):
    writer = SharedEventLog(shared_log)
    asyncio.run(writer.append_many(_events("c", 4)))
    first = Relay(shared_log, store.connect(tmp_path / "first.sqlite3"))
    second = Relay(shared_log, store.connect(tmp_path / "second.sqlite3"))
    assert first.step() == 4 and first.leader
    asyncio.run(writer.append_many(_events("d", 3)))
    assert second.step() == 0 and not second.leader
    first.close()  # the leader goes away: its session lock with it
    assert second.step() == 3 and second.leader
    writer.close()
    second.close()


def test_an_ingest_replica_without_a_shared_log_is_refused():
    from pydantic import ValidationError

    from relearn.monitoring.settings import DriftSettings

    with pytest.raises(ValidationError, match="role ingest needs shared_log_url"):
        DriftSettings(role="ingest")


def test_the_shared_log_is_bounded_while_the_monitor_is_down(tmp_path, reference_file, shared_log):
    """No monitor relays: past shared_log_max_events the replica refuses with 503 (stored nothing), and
    takes events again once a monitor has relayed the backlog; every accepted event reaches the monitor."""
    cap = 1000
    replica = Server(
        tmp_path / "ingest", None, role="ingest", shared_log_url=shared_log, shared_log_max_events=str(cap)
    )
    monitor = None
    try:
        replica.wait_ready()
        _, before, _ = scenario_stream("covariate_shift")
        events = iter(transaction_events(before.iloc[:2000], "cap"))
        accepted, refused = 0, None
        for event in events:
            code, body = post(replica.url, *event)
            if code != 202:
                refused = (code, body)
                break
            accepted += 1
        assert refused is not None, f"{accepted} events accepted past the cap of {cap}"
        code, body = refused
        assert code == 503 and "shared log full" in body["detail"]
        assert "shared_log_max_events" in body["detail"]
        # the bound holds within a second of load (PostgreSQL's live-row estimate); a refusal stores nothing
        assert cap <= accepted <= 2 * cap and _rows(shared_log) == accepted
        assert _metric(replica.url, "relearn_drift_shared_log_backlog_events") >= cap // 2
        monitor = Server(tmp_path / "monitor", reference_file, shared_log_url=shared_log)
        monitor.wait_ready()
        deadline = time.monotonic() + 60
        while _metric(monitor.url, "relearn_drift_relayed_events_total") < accepted:
            assert time.monotonic() < deadline, "the monitor did not relay the backlog"
            time.sleep(0.2)
        time.sleep(1.2)  # the replica's next estimate sees the relayed rows gone
        assert post(replica.url, *next(events))[0] == 202
    finally:
        for server in (replica, monitor):
            if server is not None:
                server.stop()
