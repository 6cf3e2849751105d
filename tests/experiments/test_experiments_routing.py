"""An experiment served locally: the transformer assigns arms, the router routes them, the log keeps them.

Real processes on loopback: two predictors (tiny artifacts, versions 1 and 2) logging to a CloudEvents sink,
the router in front of them; two transformer instances in process (two replicas) on one SQLite state.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import numpy as np
import pytest

from relearn.experiments.assignment import Split, assign
from relearn.experiments.routing import ARM_HEADER, RunningExperiment
from relearn.experiments.store import ExperimentStore
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from relearn.rollout.local_backend import LocalBackend
from relearn.rollout.router import ROUTE_HEADER
from support.rollout_stack import CATEGORIES, MODEL, make_artifacts
from support.serving_stack import EventSink, Server, free_port, stop_process, wait_until

N_NUM, N_CAT = len(NUMERIC_INPUTS), len(CATEGORICAL_INPUTS)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Predictors 1 (stable) and 2 behind the router; yields (router gRPC target, sink)."""
    tmp = tmp_path_factory.mktemp("served")
    artifacts = make_artifacts(tmp / "artifacts")
    sink = EventSink()
    predictors = []
    for version in ("1", "2"):
        args = ["--model-uri", str(artifacts[version]), "--model-version", version, "--workers", "1"]
        args += ["--log-sink-url", sink.url, "--inference-service", MODEL]
        predictors.append(Server("relearn.serving.predictor", args, {}, tmp / f"p{version}.log").start())
    rest, rpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "relearn.rollout.router", "--state", str(tmp / "state.json")]
    router = subprocess.Popen([*cmd, "--rest-port", str(rest), "--grpc-port", str(rpc)])
    try:
        for version, server in zip(("1", "2"), predictors, strict=True):
            server.wait_ready(timeout=120)
            LocalBackend(tmp / "state.json").register(version, rest=server.url, grpc=server.grpc_target)
        ready = f"http://127.0.0.1:{rest}/v2/health/ready"
        up = lambda: httpx.get(ready, timeout=1).status_code == 200  # noqa: E731
        wait_until("router", up, router, tmp / "p1.log", 60, errors=(httpx.HTTPError,))
        yield f"127.0.0.1:{rpc}", sink, f"http://127.0.0.1:{rest}"
    finally:
        stop_process(router)
        for server in predictors:
            server.stop()
        sink.close()


def infer(target: str, metadata: tuple = ()) -> tuple[object, dict[str, str]]:
    """One valid ModelInfer through the router: (response or the error, trailing metadata)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from relearn.serving import tensors

    request = pb.ModelInferRequest(
        model_name=MODEL,
        id="g",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=tensors.NUMERIC, datatype="FP32", shape=[1, N_NUM]),
            pb.ModelInferRequest.InferInputTensor(
                name=tensors.CATEGORICAL, datatype="BYTES", shape=[1, N_CAT]
            ),
        ],
        raw_input_contents=[
            np.zeros((1, N_NUM), np.float32).tobytes(),
            tensors.serialize_bytes(np.array([CATEGORIES], dtype=object)),
        ],
    )
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            response, state = call.with_call(request, metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err, dict(err.trailing_metadata() or ())
        return response, dict(state.trailing_metadata() or ())


def test_the_router_sends_an_arm_to_its_version_and_refuses_an_unserved_one(served):
    target, _, url = served
    response, trailers = infer(target)
    assert trailers[ROUTE_HEADER] == "stable" and response.model_version == "1"
    for _ in range(5):  # every time, not by chance
        response, trailers = infer(target, ((ARM_HEADER, "v2"),))
        assert trailers[ROUTE_HEADER] == "experiment/v2" and response.model_version == "2"
    err, trailers = infer(target, ((ARM_HEADER, "v9"),))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "route experiment/v9" in err.details()
    body = {
        "inputs": [
            {"name": "numeric", "datatype": "FP32", "shape": [1, N_NUM], "data": [0.0] * N_NUM},
            {"name": "categorical", "datatype": "BYTES", "shape": [1, N_CAT], "data": CATEGORIES},
        ]
    }
    rest = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, headers={ARM_HEADER: "v2"}, timeout=10)
    assert rest.status_code == 200 and rest.headers[ROUTE_HEADER] == "experiment/v2"
    assert rest.json()["model_version"] == "2"


def test_running_experiment_follows_the_store(tmp_path):
    store = ExperimentStore(tmp_path / "s.json")
    running = RunningExperiment(store.path)
    assert running.arms(["u1"]) is None
    salt = store.start("ab", {"1": 30, "2": 70}, control="1")["salt"]
    name, arms = running.arms([f"u{i}" for i in range(50)])
    assert name == "ab" and list(arms) == [
        assign(f"u{i}", salt, Split.of({"1": 30, "2": 70})) for i in range(50)
    ]
    store.stop("ab", "done")
    assert running.arms(["u1"]) is None
    assert RunningExperiment(store.path, traffic="other").arms(["u1"]) is None


def rows(users: range, step: int) -> list[dict]:
    """One transaction per user, ``step`` seconds apart per round (event time increases per card)."""
    when = (datetime.now(UTC) - timedelta(minutes=10) + timedelta(seconds=step)).isoformat()
    return [
        {"transaction_id": f"t{step}-{u}", "event_timestamp": when, "user_id": f"card-{u}",
         "merchant_id": f"m{u % 5}", "amount": 10.0 + u, "country": "DE", "device_id": f"d{u}",
         "currency": "EUR", "merchant_category": "grocery", "channel": "pos"}
        for u in users
    ]  # fmt: skip


def test_every_card_sees_one_arm_across_replicas_and_the_log_keeps_it(
    served, settings, tmp_path, monkeypatch
):
    from relearn.serving.config import TransformerSettings
    from relearn.serving.transformer_model import FraudTransformer

    target, sink, _ = served
    monkeypatch.setenv("RELEARN_EXPERIMENT_STORE", str(tmp_path / "experiments.json"))
    split = {"v1": 50, "v2": 50}
    salt = ExperimentStore(tmp_path / "experiments.json").start("ab", split, control="v1")["salt"]
    # The second replica is wired as the chart wires the cluster's: arm-marked calls go to the experiment
    # router (experiment_host), its predictor host answers nothing.
    replicas = [
        FraudTransformer(TransformerSettings(predictor_host=target)),
        FraudTransformer(
            TransformerSettings(predictor_host=f"127.0.0.1:{free_port()}", experiment_host=target)
        ),
    ]
    for replica in replicas:
        replica.load()
    start = len(sink.events)
    from relearn.serving.metrics import ROWS

    def rows_by_version() -> dict[str, float]:
        return {
            s.labels["model_version"]: s.value
            for m in ROWS.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels["component"] == "transformer"
        }

    before = rows_by_version()

    async def rounds() -> list[dict]:
        out = []
        for step in range(4):  # every card four times, alternately through each replica
            out.append(await replicas[step % 2].predict({"instances": rows(range(40), step)}))
        return out

    answers = asyncio.run(rounds())
    assert all(len(a["predictions"]) == 40 for a in answers)
    # The shares the transformers route by are on their /metrics (prometheus-client's default registry).
    from prometheus_client import REGISTRY

    share = {
        a: REGISTRY.get_sample_value("relearn_experiment_arm_share", {"experiment": "ab", "arm": a})
        for a in split
    }
    assert share == {"v1": 0.5, "v2": 0.5}
    assert all(sorted(a["model_version"].split(",")) == ["1", "2"] for a in answers)  # both arms per batch
    # Each inference's request (transaction ids) and response (model version) events share a ce-id.
    events = sink.wait_for(lambda e: len(e) - start >= 2 * 2 * 4, timeout=20)[start:]
    ids, versions = {}, {}
    for headers, body in events:
        doc = json.loads(body)
        if headers["ce-type"].endswith(".request"):
            ids[headers["ce-id"]] = next(i["data"] for i in doc["inputs"] if i["name"] == "transaction_id")
        else:
            versions[headers["ce-id"]] = doc["model_version"]
    seen = defaultdict(set)
    for ce_id, transactions in ids.items():
        for t in transactions:
            seen[f"card-{t.split('-')[1]}"].add(versions[ce_id])
    assert len(seen) == 40 and all(len(v) == 1 for v in seen.values()), "a card saw two arms"
    expected = {u: assign(u, salt, Split.of(split)).removeprefix("v") for u in seen}
    assert {u: v.pop() for u, v in seen.items()} == expected
    assert 10 < sum(v == "2" for v in expected.values()) < 30
    # Per-arm metrics of batches mixing arms: each arm's rows under its own version, never "1,2".
    after = rows_by_version()
    scored = {v: after.get(v, 0) - before.get(v, 0) for v in after if after.get(v, 0) != before.get(v, 0)}
    by_arm = {v: 4 * sum(a == v for a in expected.values()) for v in ("1", "2")}
    assert scored == by_arm
