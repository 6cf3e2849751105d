"""Parity, proved end to end: a replay through the real transformer equals the pandas engine on the lake.

A few thousand transactions go to the transformer over gRPC, one at a time in event-time order, with the
chargebacks posted to the feature feed as they arrive — and with a duplicate, an out-of-order event, a
kill -9 of the state's Redis (the client retries through the 503s) and a kill -9 of the transformer in the
middle. Then:

* every model-input vector the predictor received (its payload log) equals ``model_inputs`` of the
  pandas engine's point-in-time features for that transaction (float32, as sent);
* the state at the end, read for every card, equals the pandas engine's entity features exactly (counts
  exact, floats to 1e-9 relative): nothing lost, nothing counted twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from relearn.demo.replay import infer_request
from relearn.demo.stack import free_port
from relearn.features.spec import MODEL_INPUTS, NUMERIC_INPUTS
from relearn.features.state import StateSettings, open_state
from relearn.features.transforms import epoch_us, model_inputs
from relearn.monitoring.payloads import request_features
from support.parity import (
    chargeback_stream,
    events,
    mismatches,
    offline_at,
    offline_for_requests,
    small_world,
)
from support.serving_stack import EventSink, RedisServer, Server, stop_process, wait_until

MODEL = "relearn-fraud"


@pytest.fixture(scope="module")
def redis():
    with RedisServer(durable=True) as server:
        yield server


def _feed(tmp_path, env):
    port = free_port()
    log = (tmp_path / "feed.log").open("w")
    argv = [sys.executable, "-m", "relearn.features.feed", "--port", str(port)]
    process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    ready = lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200  # noqa: E731
    wait_until("feed", ready, process, tmp_path / "feed.log", 60, errors=(httpx.HTTPError,))
    return process, url


def _send(stub, row) -> None:
    """Score one transaction; retry through 503s/resets (Redis or the transformer restarting)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            stub().ModelInfer(infer_request(row, MODEL), timeout=10)
            return
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_replay_through_the_transformer_equals_the_lake(trained, redis, tmp_path):
    transactions, labels = small_world(seed=11, days=8)
    transactions = transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    env = {
        "RELEARN_HOME": str(trained["home"]),
        "RELEARN_STATE_BACKEND": "redis",
        "RELEARN_STATE_REDIS_URLS": redis.url(db=3),
        "RELEARN_STATE_LATENESS_SECONDS": "3600",
    }
    redis.client(db=3).flushdb()
    sink = EventSink()
    predictor = Server("relearn.serving.predictor", ["--log-sink-url", sink.url], env, tmp_path / "p.log")
    transformer = Server(
        "relearn.serving.transformer", ["--predictor-host", predictor.grpc_target], env, tmp_path / "t.log"
    )
    feed, feed_url = None, ""
    try:
        predictor.start().wait_ready()
        transformer.start().wait_ready()
        feed, feed_url = _feed(tmp_path, env)
        channel = {"c": grpc.insecure_channel(transformer.grpc_target)}

        def stub():
            from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

            return pb_grpc.GRPCInferenceServiceStub(channel["c"])

        # The plan: event-time order, except one transaction sent 5 minutes of stream late (within the
        # lateness bound), a duplicate of another, and the two kills a third and two thirds of the way.
        order = list(range(len(transactions)))
        chargebacks = chargeback_stream(transactions, labels)
        candidates = range(len(order) // 2, len(order))
        late = next(i for i in candidates if _displaceable(transactions, i, chargebacks))
        moved = order.pop(late)
        order.insert(_after(transactions, late, minutes=5) - 1, moved)
        duplicate = order[len(order) // 4]
        times = transactions["event_timestamp"]
        posted = 0
        for step, i in enumerate(order):
            row = transactions.iloc[i]
            due = [c for c in chargebacks[posted:] if c[2] < int(times.iloc[i].value // 1000)]
            if due and i != moved:
                body = [
                    {"transaction_id": tid, "merchant_id": m, "received_timestamp": _iso(t)}
                    for m, tid, t in due
                ]
                httpx.post(f"{feed_url}/chargebacks", json=body, timeout=10).raise_for_status()
                posted += len(due)
            _send(stub, row)
            if i == duplicate:
                _send(stub, row)  # the same transaction again: a client retry after a lost answer
            if step == len(order) // 3:
                redis.kill()  # kill -9 of the stateful process: AOF with fsync on every write
                redis.start()
            if step == 2 * len(order) // 3:
                transformer.process.kill()
                transformer.process.wait(timeout=10)
                transformer.start().wait_ready()
                channel["c"] = grpc.insecure_channel(transformer.grpc_target)

        served = _served(sink, len(transactions))
        offline = offline_at(transactions, labels)
        frame = transactions.assign(**pd.DataFrame([offline[t] for t in transactions["transaction_id"]]))
        expected = model_inputs(frame).set_index(transactions["transaction_id"])
        got = served.loc[expected.index]
        for name in NUMERIC_INPUTS:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)
        for name in MODEL_INPUTS:
            if name not in NUMERIC_INPUTS:
                assert (got[name].astype(str) == expected[name].astype(str)).all(), name

        # The state now, for every card (and a merchant of each), equals the lake's features at the end.
        end = transactions["event_timestamp"].iloc[-1] + pd.Timedelta(minutes=1)
        probes = transactions.drop_duplicates("user_id").assign(event_timestamp=end)
        probes = probes.assign(transaction_id=[f"probe-{i}" for i in range(len(probes))])
        state = open_state(StateSettings(backend="redis", redis_urls=redis.url(db=3)))
        read = dict(zip(probes["transaction_id"], state.read(events(probes)), strict=True))
        state.close()
        lake = offline_for_requests(transactions, labels, probes)
        assert mismatches(read, lake.set_index("transaction_id").to_dict("index")) == []
        assert sum(v["user_txn_count_7d"] for v in read.values()) > len(probes)  # not trivially empty
    finally:
        stop_process(feed, signal.SIGTERM)
        for server in (transformer, predictor):
            server.stop()
        sink.close()


def _iso(us: int) -> str:
    return pd.Timestamp(us, unit="us", tz="UTC").isoformat()


def _after(transactions: pd.DataFrame, i: int, minutes: int) -> int:
    """The position of the first transaction more than ``minutes`` after transaction ``i``."""
    times = epoch_us(transactions["event_timestamp"])
    return int(np.searchsorted(times, times[i] + minutes * 60 * 10**6, side="right"))


def _displaceable(transactions: pd.DataFrame, i: int, chargebacks: list[tuple[str, str, int]]) -> bool:
    """No transaction of its card or merchant in the 5 minutes after it, and no chargeback of its merchant.

    Sent late, such a transaction is served exactly what the lake says, and so is everything sent before it.
    """
    row, end = transactions.iloc[i], _after(transactions, i, minutes=5)
    between = transactions.iloc[i + 1 : end]
    if ((between["user_id"] == row.user_id) | (between["merchant_id"] == row.merchant_id)).any():
        return False
    start, stop = (
        int(t.value // 1000) for t in (row.event_timestamp, transactions["event_timestamp"].iloc[end - 1])
    )
    return not any(m == row.merchant_id and start <= t <= stop for m, _, t in chargebacks)


def _served(sink: EventSink, n: int) -> pd.DataFrame:
    """The model inputs the predictor logged, one row per transaction (the duplicate's copies are equal)."""

    def requests(events):
        return [e for e in events if e[0].get("ce-type", "").endswith(".request")]

    logged = sink.wait_for(lambda events: len(requests(events)) >= n + 1, timeout=60)
    rows = [r for _, body in requests(logged) for r in request_features(body)]
    frame = pd.DataFrame(rows)
    copies = frame.groupby("transaction_id").nunique(dropna=False)
    assert (copies <= 1).all().all(), copies[(copies > 1).any(axis=1)]  # retries saw what the first call saw
    return frame.drop_duplicates("transaction_id").set_index("transaction_id")
