"""The streaming state against the pandas engine: same features, once per transaction, on both backends."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from relearn.features import state as state_module
from relearn.features.backfill import bootstrap
from relearn.features.state import Event, Rejected, StateSettings, open_state
from relearn.features.windows import HOUR_US
from support.parity import chargeback_stream, events, mismatches, offline_at, small_world
from support.serving_stack import RedisServer


@pytest.fixture(scope="module")
def world():
    transactions, labels = small_world()
    return transactions, labels, offline_at(transactions, labels)


@pytest.fixture(scope="module")
def durable_redis():
    with RedisServer(durable=True) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_state(request, tmp_path, durable_redis):
    """A factory of states on one fresh store (several states = several replicas)."""
    opened = []
    if request.param == "redis":
        durable_redis.client().flushall()

    def make(**overrides):
        base = {"backend": request.param, "path": tmp_path / "state.db", "redis_urls": durable_redis.url()}
        state = open_state(StateSettings(**{**base, "lateness_seconds": 40 * 86400, **overrides}))
        opened.append(state)
        return state

    yield make
    for state in opened:
        state.close()


def replay(state, transactions, labels, skip=()) -> dict:
    """Send transactions and chargebacks in event-time order; returns the served features by id."""
    chargebacks = chargeback_stream(transactions, labels)
    stream = [(e.time_us, 1, e) for e in events(transactions)] + [(c[2], 0, c) for c in chargebacks]
    served = {}
    for _, kind, item in sorted(stream, key=lambda x: (x[0], x[1])):
        if kind:
            if item.transaction_id not in skip:
                served[item.transaction_id] = state.observe([item])[0]
        else:
            state.add_chargebacks([item])
    return served


def test_replay_equals_the_pandas_engine(world, make_state):
    transactions, labels, offline = world
    served = replay(make_state(), transactions, labels)
    assert len(served) == len(transactions) > 3000
    assert mismatches(served, offline) == []
    assert sum(v["merchant_chargeback_rate_30d"] > 0 for v in served.values()) > 50  # chargebacks count


def test_a_window_changed_on_one_side_is_caught(world, make_state, monkeypatch):
    transactions, labels, offline = world
    windows = dict(state_module.WINDOWS, user_txn_count_1h=HOUR_US + 60_000_000)  # one minute longer
    monkeypatch.setattr(state_module, "WINDOWS", windows)
    bad = mismatches(replay(make_state(), transactions, labels), offline)
    assert bad and {feature for _, feature, *_ in bad} == {"user_txn_count_1h"}


def test_retries_replicas_and_bootstrap_count_once(world, make_state):
    """Half bootstrapped from the lake, the rest streamed by two replicas at once, each event sent twice."""
    transactions, labels, offline = world
    half = len(transactions) // 2
    cut = transactions["event_timestamp"].iloc[half]
    first = make_state()
    bootstrap(first, transactions, labels[labels["chargeback_timestamp"] < cut], cut.to_pydatetime())
    bootstrap(first, transactions, labels[labels["chargeback_timestamp"] < cut], cut.to_pydatetime())
    second = make_state()
    later = transactions.iloc[half:]
    stream = events(later)
    served: dict[str, dict] = {}
    chargebacks = [c for c in chargeback_stream(transactions, labels) if c[2] >= int(cut.value // 1000)]

    def send(state, items):
        for item in items:
            for c in [c for c in chargebacks if c[2] <= item.time_us]:
                state.add_chargebacks([c])  # both replicas post every chargeback: counted once
            served.setdefault(item.transaction_id, []).append(state.observe([item])[0])

    # Two replicas send every event at the same time (a client retry, the shadow mirror), then A again.
    threads = [threading.Thread(target=send, args=(s, stream)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    send(first, stream[:50])
    for tid, answers in served.items():
        assert len(answers) in (2, 3) and all(a == answers[0] for a in answers[1:]), tid
    first_answers = {tid: answers[0] for tid, answers in served.items()}
    assert mismatches(first_answers, {t: offline[t] for t in first_answers}) == []


def test_late_and_future_events_are_rejected_and_change_nothing(make_state):
    state = make_state(lateness_seconds=3600)
    t0 = 1_767_225_600_000_000  # 2026-01-01
    first = Event("a", t0, "u1", "m1", 10.0, "DE", "d1")
    state.observe([first])
    probe = Event("probe", t0 + 10, "u1", "m1", 5.0)
    before = state.read([probe])
    with pytest.raises(Rejected, match=r"event_timestamp.*lateness") as late:
        state.observe([Event("b", t0 - 2 * 3600 * 10**6, "u1", "m1", 1.0)])
    assert late.value.reason == "late"
    with pytest.raises(Rejected, match=r"event_timestamp.*ahead") as future:
        state.observe([Event("c", t0 + 10**18, "u1", "m1", 1.0), Event("d", t0 + 5, "u1", "m1", 1.0)])
    assert future.value.reason == "future"
    assert state.read([probe]) == before  # neither event, nor the valid one of the rejected batch
    assert before[0]["user_txn_count_1h"] == 1
    # An out-of-order event inside the bound is placed by its event time.
    state.observe([Event("e", t0 - 60 * 10**6, "u1", "m2", 20.0)])
    after = state.read([probe])[0]
    assert after["user_txn_count_1h"] == 2 and after["user_distinct_merchants_7d"] == 2
    assert state.read([Event("p2", t0 - 1, "u1", "m1")])[0]["user_txn_count_1h"] == 1  # sees only "e"


def test_memory_is_bounded_by_the_longest_window(make_state, durable_redis):
    state = make_state(lateness_seconds=0)
    t0, day = 1_767_225_600_000_000, 86_400 * 10**6
    for i in range(60):  # one transaction a day for 60 days, same user and merchant
        state.observe([Event(f"t{i}", t0 + i * day, "u1", "m1", float(i + 1), "DE", "d")])
    window = state.backend.users([Event("q", t0 + 60 * day, "u1", "m1")], "read")[0]
    if state.settings.backend == "redis":
        client = durable_redis.client()
        stored_user = client.zcard("relearn:state:u:{u1}")
        stored_merchant = client.zcard("relearn:state:m:{m1}")
        assert client.hlen("relearn:state:u:{u1}:ids") == stored_user
    else:
        conn = state.backend.conn
        stored_user = conn.execute("SELECT COUNT(*) FROM user_events").fetchone()[0]
        stored_merchant = conn.execute("SELECT COUNT(*) FROM merchant_events").fetchone()[0]
    assert stored_user <= 9  # 7 days of events plus the newest older one (the last transaction)
    assert stored_merchant <= 31
    assert len(window.times) == 7 and window.last is not None


def test_the_backfill_command_takes_the_lake_or_its_folders_and_refuses_nothing_found(
    world, tmp_path, monkeypatch, capsys
):
    """``python -m relearn.features.backfill`` with the lake root or its ``transactions/`` and ``labels/``
    folders adds the same events; a folder (or time) holding no transactions is an error, not "0 added"."""
    from relearn.data import io
    from relearn.features.backfill import main

    transactions, labels, _ = world
    lake = tmp_path / "lake"
    io.write_partitioned(transactions, lake, "transactions")
    io.write_partitioned(labels, lake, "labels")
    until = (transactions["event_timestamp"].max() + pd.Timedelta(seconds=1)).isoformat()
    summaries = []
    for name, (tx, lb) in {"root": (lake, lake), "folders": (lake / "transactions", lake / "labels")}.items():
        monkeypatch.setenv("RELEARN_STATE_PATH", str(tmp_path / f"{name}.db"))
        assert main(["--transactions", str(tx), "--labels", str(lb), "--until", until]) == 0
        summaries.append(capsys.readouterr().out)
    assert summaries[0] == summaries[1] and f"'transactions': {len(transactions)}" in summaries[0]
    with pytest.raises(SystemExit) as refused:
        main(["--transactions", str(tmp_path), "--labels", str(lake), "--until", until])
    assert refused.value.code == 2 and "no transactions before" in capsys.readouterr().err
