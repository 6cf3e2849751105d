"""The transformer's path into the streaming state (observe_async) equals observe, on both backends.

Redis: asyncio clients, scripts by SHA reloaded after a SCRIPT FLUSH (a restarted server); SQLite: on the
event loop while the database is free, in a thread while another process holds the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from relearn.features.state import Event, StateSettings, open_state
from support.parity import events, mismatches, offline_at, small_world
from support.serving_stack import RedisServer


@pytest.fixture(scope="module")
def world():
    transactions, labels = small_world(days=4)
    return transactions, offline_at(transactions, labels.iloc[:0])


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url()


@pytest.fixture(params=["sqlite", "redis"])
def state(request, tmp_path, redis_url):
    settings = {"backend": request.param, "path": tmp_path / "state.db", "redis_urls": redis_url}
    opened = open_state(StateSettings(**settings, lateness_seconds=40 * 86400))
    if request.param == "redis":
        opened.backend.shards[0].flushall()
    yield opened
    opened.close()


def test_observe_async_equals_the_pandas_engine(world, state):
    transactions, offline = world
    stream = sorted(events(transactions), key=lambda e: e.time_us)

    async def replay() -> dict:
        served = {}
        for i, event in enumerate(stream):
            if i == len(stream) // 2 and state.settings.backend == "redis":
                state.backend.shards[0].script_flush()  # as after a restart: NOSCRIPT, reloaded, rerun
            served[event.transaction_id] = (await state.observe_async([event]))[0]
        served[stream[0].transaction_id] = (await state.observe_async([stream[0]]))[0]  # a retry: no-op
        return served

    served = asyncio.run(replay())
    assert len(served) == len(transactions) > 500
    assert mismatches(served, offline) == []


def test_a_locked_sqlite_state_waits_in_a_thread_not_on_the_loop(tmp_path):
    state = open_state(StateSettings(backend="sqlite", path=tmp_path / "s.db"))
    t0 = 1_767_225_600_000_000
    lock = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process writing

    async def observe_while_locked() -> tuple[list, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        asyncio.get_running_loop().call_later(0.3, lock.execute, "ROLLBACK")
        rows = await state.observe_async([Event("a", t0, "u1", "m1", 5.0, "DE", "d")])
        ticker.cancel()
        return rows, ticks

    try:
        rows, ticks = asyncio.run(observe_while_locked())
    finally:
        lock.close()
    assert ticks >= 10  # the loop kept running while the write lock was held
    assert rows[0]["user_txn_count_1h"] == 0
    assert state.read([Event("p", t0 + 1, "u1", "m1")])[0]["user_txn_count_1h"] == 1
    state.close()


def test_a_bulk_add_after_a_script_flush_adds_each_event_once(world, state):
    transactions, _ = world
    stream = sorted(events(transactions), key=lambda e: e.time_us)
    if state.settings.backend == "redis":
        state.backend.shards[0].script_flush()
    state.add(stream)
    state.add(stream[: len(stream) // 2])  # again: idempotent
    end = stream[-1].time_us + 1
    probes = [Event(f"p{i}", end, e.user_id, e.merchant_id) for i, e in enumerate(stream[-50:])]
    expected = [
        sum(1 for e in stream if e.user_id == p.user_id and e.time_us >= end - 7 * 86_400_000_000)
        for p in probes
    ]
    assert [row["user_txn_count_7d"] for row in state.read(probes)] == expected
