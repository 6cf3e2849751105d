"""Serving end to end: real predictor and transformer processes on loopback, real Feast, a real model.

One small pipeline run per session registers the champion and materializes the online store; the servers
start once (predictor with a live test sink, predictor with a dead sink, transformer) and every test talks
to them over REST (httpx) and v2 gRPC (grpcio with KServe's generated protos, a standard v2 client).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from conftest import SERVING_DAYS, SERVING_START
from relearn.data.io import read_labels, read_transactions
from relearn.data.schema import REQUEST_FIELDS
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from support.serving_stack import EventSink, Server, free_port

pytestmark = pytest.mark.slow

MODEL = "relearn-fraud"
START, DAYS = SERVING_START, SERVING_DAYS
END = START + timedelta(days=DAYS)


@pytest.fixture(scope="session")
def stack(trained):
    """Predictor (live sink), predictor (dead sink, tiny queue) and transformer, all on 127.0.0.1."""
    root, env = trained["root"], {"RELEARN_HOME": str(trained["home"])}
    sink = EventSink()
    live = Server("relearn.serving.predictor", ["--log-sink-url", sink.url], env, root / "predictor.log")
    dead = Server(
        "relearn.serving.predictor",
        ["--log-sink-url", f"http://127.0.0.1:{free_port()}/", "--log-queue-size", "2", "--log-workers", "1"],
        env,
        root / "predictor-dead.log",
    )
    transformer = Server(
        "relearn.serving.transformer",
        ["--predictor-host", live.grpc_target, "--max-batch-size", "256"],
        env,
        root / "transformer.log",
    )
    servers = [live, dead, transformer]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield {"predictor": live, "dead": dead, "transformer": transformer, "sink": sink}
    finally:
        for server in servers:  # terminate all first: they shut down in parallel
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        for server in servers:
            server.stop()
        sink.close()


def stub(server: Server) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))


def ingested(trained) -> pd.DataFrame:
    """The transactions the pipeline run ingested."""
    return read_transactions(Path(trained["summary"]["run_dir"]) / "ingest" / "transactions")


def requests_at_end(trained, n: int = 80) -> pd.DataFrame:
    """Raw requests of known users and merchants (plus one unknown user), stamped at the window's end."""
    tx = ingested(trained)
    tx = tx.tail(2000).sample(n=n, random_state=0)
    frame = tx[list(REQUEST_FIELDS)].reset_index(drop=True)
    frame.loc[0, "user_id"] = "cold-user-never-seen"
    frame["event_timestamp"] = pd.Timestamp(END)
    return frame


def v1_instances(frame: pd.DataFrame) -> list[dict]:
    out = frame.assign(event_timestamp=frame["event_timestamp"].map(lambda t: t.isoformat()))
    return json.loads(out.to_json(orient="records"))


def numeric_example(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    numeric = rng.uniform(0, 3, size=(n, len(NUMERIC_INPUTS))).astype(np.float32)
    categorical = np.array([["grocery", "pos", "DE", "EUR", "13"]] * n, dtype=object)
    assert categorical.shape[1] == len(CATEGORICAL_INPUTS)
    return numeric, categorical


def v2_predictor_json(numeric: np.ndarray, categorical: np.ndarray, request_id: str = "r") -> dict:
    from relearn.serving.tensors import v2_json

    inputs = [
        ("numeric", "FP32", numeric.shape, numeric),
        ("categorical", "BYTES", categorical.shape, categorical),
    ]
    return v2_json(inputs, request_id)


def grpc_predictor_request(numeric, categorical, raw: bool, request_id: str = "g") -> pb.ModelInferRequest:
    from relearn.serving.tensors import serialize_bytes

    tensors = [
        pb.ModelInferRequest.InferInputTensor(name="numeric", datatype="FP32", shape=list(numeric.shape)),
        pb.ModelInferRequest.InferInputTensor(
            name="categorical", datatype="BYTES", shape=list(categorical.shape)
        ),
    ]
    request = pb.ModelInferRequest(model_name=MODEL, id=request_id, inputs=tensors)
    if raw:
        request.raw_input_contents.extend([numeric.tobytes(), serialize_bytes(categorical)])
    else:
        request.inputs[0].contents.fp32_contents.extend(numeric.ravel().tolist())
        request.inputs[1].contents.bytes_contents.extend([v.encode() for v in categorical.ravel()])
    return request


def grpc_transactions_request(frame: pd.DataFrame) -> pb.ModelInferRequest:
    """A v2 gRPC request for the transformer: one BYTES (FP64 for amount) input per request field."""
    strings = frame.assign(event_timestamp=frame["event_timestamp"].map(lambda t: t.isoformat()))
    inputs = []
    for name in REQUEST_FIELDS:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP64" if name == "amount" else "BYTES", shape=[len(frame)]
        )
        if name == "amount":
            tensor.contents.fp64_contents.extend(strings[name].astype(float).tolist())
        else:
            tensor.contents.bytes_contents.extend([str(v).encode() for v in strings[name]])
        inputs.append(tensor)
    return pb.ModelInferRequest(model_name=MODEL, inputs=inputs)


def test_entry_points_have_help():
    modules = ("predictor", "transformer", "batch", "local")
    for module in (f"relearn.serving.{m}" for m in modules):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, check=True
        )
        assert any(o in out.stdout for o in ("--http-port", "--input", "--transformer-http-port")), out.stdout


def test_transformer_scores_equal_offline_scores(trained, stack):
    """Training/serving parity: online features at the window's end == point-in-time join at that time."""
    from relearn.features.transforms import model_inputs
    from relearn.model.net import load_model, score
    from relearn.serving.predictor_model import resolve_artifact
    from support.parity import offline_for_requests

    frame = requests_at_end(trained)
    labels = read_labels(Path(trained["summary"]["run_dir"]) / "ingest" / "labels")
    offline_inputs = model_inputs(offline_for_requests(ingested(trained), labels, frame))
    directory, version = resolve_artifact(f"models:/{MODEL}@champion", trained["root"] / "model")
    net, preprocessor, _ = load_model(directory)
    expected = score(net, preprocessor, offline_inputs)

    transformer = stack["transformer"]
    response = httpx.post(
        f"{transformer.url}/v1/models/{MODEL}:predict", json={"instances": v1_instances(frame)}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version == "1"
    got = np.array([p["score"] for p in body["predictions"]])
    assert [p["transaction_id"] for p in body["predictions"]] == frame["transaction_id"].tolist()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0  # the rows really differ

    # Same over v2 gRPC with one BYTES/FP64 input per request field.
    reply = stub(transformer).ModelInfer(grpc_transactions_request(frame), timeout=30)
    assert reply.model_version == "1"
    scores = next(o for o in reply.outputs if o.name == "score")
    got_grpc = (
        np.array(scores.contents.fp32_contents)
        if scores.contents.fp32_contents
        else np.frombuffer(
            reply.raw_output_contents[[o.name for o in reply.outputs].index("score")], dtype=np.float32
        )
    )
    np.testing.assert_allclose(got_grpc, expected, atol=1e-5, rtol=0)

    metrics = httpx.get(f"{transformer.url}/metrics").text
    assert 'relearn_serving_cold_start_lookups_total{model_version="1"}' in metrics
    for stage in ("feature_fetch", "transform", "predict"):
        assert f'stage="{stage}"' in metrics


def test_predictor_health_and_metadata(stack):
    predictor = stack["predictor"]
    client = stub(predictor)
    assert client.ServerLive(pb.ServerLiveRequest()).live
    assert client.ServerReady(pb.ServerReadyRequest()).ready
    assert client.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    assert client.ServerMetadata(pb.ServerMetadataRequest()).name
    meta = client.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("numeric", "FP32", [-1, len(NUMERIC_INPUTS)]),
        ("categorical", "BYTES", [-1, len(CATEGORICAL_INPUTS)]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("score", "FP32", [-1]),
        ("decision", "BOOL", [-1]),
    ]
    rest = httpx.get(f"{predictor.url}/v2/models/{MODEL}").json()
    assert [i["name"] for i in rest["inputs"]] == ["numeric", "categorical"]
    assert httpx.get(f"{predictor.url}/v2/models/{MODEL}/ready").status_code == 200


def test_predictor_json_raw_and_v1_agree(stack):
    predictor = stack["predictor"]
    numeric, categorical = numeric_example()
    client = stub(predictor)
    plain = client.ModelInfer(grpc_predictor_request(numeric, categorical, raw=False), timeout=10)
    raw = client.ModelInfer(grpc_predictor_request(numeric, categorical, raw=True), timeout=10)
    assert plain.model_version == raw.model_version == "1"
    plain_scores = np.array(plain.outputs[0].contents.fp32_contents, dtype=np.float32)
    assert len(raw.raw_output_contents) == 2 and not raw.outputs[0].HasField("contents")
    raw_scores = np.frombuffer(raw.raw_output_contents[0], dtype=np.float32)
    raw_decisions = np.frombuffer(raw.raw_output_contents[1], dtype=np.bool_)
    np.testing.assert_array_equal(plain_scores, raw_scores)
    assert list(raw_decisions) == list(plain.outputs[1].contents.bool_contents)

    rest = httpx.post(
        f"{predictor.url}/v2/models/{MODEL}/infer", json=v2_predictor_json(numeric, categorical)
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["model_version"] == "1"
    np.testing.assert_allclose(rest.json()["outputs"][0]["data"], raw_scores, rtol=1e-6)

    names = [*NUMERIC_INPUTS, *CATEGORICAL_INPUTS]
    instances = [
        dict(zip(names, [*map(float, n), *c], strict=True)) for n, c in zip(numeric, categorical, strict=True)
    ]
    v1 = httpx.post(f"{predictor.url}/v1/models/{MODEL}:predict", json={"instances": instances}).json()
    np.testing.assert_allclose([p["score"] for p in v1["predictions"]], raw_scores, rtol=1e-6)


BAD_PREDICTOR_V2 = {
    "wrong datatype": (lambda d: d["inputs"][0].update(datatype="INT32"), "numeric"),
    "wrong shape": (lambda d: d["inputs"][0].update(shape=[3, 4]), "numeric"),
    "missing input": (lambda d: d["inputs"].pop(1), "categorical"),
    "extra input": (lambda d: d["inputs"].append({**d["inputs"][0], "name": "bogus"}), "bogus"),
    "nan": (lambda d: d["inputs"][0]["data"].__setitem__(2, "NaN"), "user_txn_count_7d"),
    "too few values": (lambda d: d["inputs"][0]["data"].pop(), "numeric"),
    "numeric ids": (
        lambda d: d["inputs"].append(
            {"name": "transaction_id", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]}
        ),
        "transaction_id",
    ),
    "ids for 2 of 3 rows": (
        lambda d: d["inputs"].append(
            {"name": "transaction_id", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
        ),
        "transaction_id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTOR_V2))
def test_predictor_rejects_bad_v2_input_over_rest(stack, case):
    numeric, categorical = numeric_example()
    body = v2_predictor_json(numeric, categorical)
    mutate, field = BAD_PREDICTOR_V2[case]
    mutate(body)
    content = json.dumps(body).replace('"NaN"', "NaN")
    response = httpx.post(
        f"{stack['predictor'].url}/v2/models/{MODEL}/infer",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


def test_predictor_rejects_bad_input_over_grpc_and_keeps_serving(stack):
    client = stub(stack["predictor"])
    numeric, categorical = numeric_example()
    cases = []
    bad = grpc_predictor_request(numeric, categorical, raw=True)
    bad.inputs[0].shape[:] = [3, 4]
    cases.append((bad, "numeric"))
    bad = grpc_predictor_request(numeric, categorical, raw=True)
    bad.inputs[0].datatype = "FP64"
    cases.append((bad, "numeric"))
    inf = numeric.copy()
    inf[1, 4] = np.inf
    cases.append((grpc_predictor_request(inf, categorical, raw=True), NUMERIC_INPUTS[4]))
    big_n, big_c = numeric_example(1025)
    cases.append((grpc_predictor_request(big_n, big_c, raw=True), "max_batch_size"))
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as error:
            client.ModelInfer(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert field in error.value.details()
    # Malformed protobuf: raw bytes that do not parse as a ModelInferRequest.
    channel = grpc.insecure_channel(stack["predictor"].grpc_target)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as error:
        call(b"\x0a\xff\xff\xff", timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Malformed JSON over REST.
    response = httpx.post(f"{stack['predictor'].url}/v2/models/{MODEL}/infer", content=b'{"inputs": [')
    assert response.status_code == 400
    # Still serving.
    assert client.ModelInfer(grpc_predictor_request(numeric, categorical, raw=True), timeout=10).outputs


def test_transformer_rejects_bad_transactions(trained, stack):
    url = f"{stack['transformer'].url}/v1/models/{MODEL}:predict"
    good = v1_instances(requests_at_end(trained, n=2))[1]
    cases = {
        "missing": ([{k: v for k, v in good.items() if k != "amount"}], "amount"),
        "extra": ([{**good, "cvv": "123"}], "cvv"),
        "string amount": ([{**good, "amount": "12"}], "amount"),
        "timestamp": ([{**good, "event_timestamp": "yesterday"}], "event_timestamp"),
        "oversize": ([good] * 257, "max_batch_size"),
    }
    for name, (instances, field) in cases.items():
        content = json.dumps({"instances": instances}).replace("NaN", "NaN")
        response = httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 400, (name, response.text)
        assert field in response.json()["error"], (name, response.text)
    assert httpx.post(url, content=b"{nope", timeout=10).status_code == 400
    v2_url = f"{stack['transformer'].url}/v2/models/{MODEL}/infer"
    fields = [
        {"name": k, "datatype": "FP64" if k == "amount" else "BYTES", "shape": [1], "data": [v]}
        for k, v in good.items()
    ]
    wrong_type = [{**f, "datatype": "BYTES", "data": ["x"]} if f["name"] == "amount" else f for f in fields]
    nan = json.dumps({"inputs": fields}).replace(str(good["amount"]), "NaN", 1)
    for body in (json.dumps({"inputs": wrong_type}), nan):
        response = httpx.post(v2_url, content=body, headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 400 and "amount" in response.json()["error"], response.text
    assert httpx.post(url, content=b'{"instances": [{"amount": NaN}]}', timeout=10).status_code == 400
    assert httpx.post(url, json={"instances": [good]}, timeout=10).status_code == 200


def scored_rows(server: Server) -> float:
    """The transformer's ``relearn_serving_rows_total``, all series."""
    lines = httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("relearn_serving_rows_total{"))


def test_transformer_refuses_what_the_pipeline_refuses_in_the_same_words(trained, stack):
    """The data contract over v1, v2 REST and gRPC: row and field named as the pipeline's report does."""
    from relearn.data.validate import validate
    from support.kserve import MESSAGE

    transformer = stack["transformer"]
    frame = requests_at_end(trained, n=2)
    good = frame.copy()
    frame.loc[1, ["amount", "currency"]] = [-3.0, "EUR"]
    expected = f"row 1: {MESSAGE}"
    assert validate(frame).check("contract:amount").detail == expected
    before = scored_rows(transformer)

    v1 = httpx.post(
        f"{transformer.url}/v1/models/{MODEL}:predict", json={"instances": v1_instances(frame)}, timeout=10
    )
    assert (v1.status_code, v1.json()) == (400, {"error": expected})
    rows = v1_instances(frame)
    inputs = [
        {
            "name": k,
            "datatype": "FP64" if k == "amount" else "BYTES",
            "shape": [2],
            "data": [r[k] for r in rows],
        }
        for k in REQUEST_FIELDS
    ]
    v2 = httpx.post(f"{transformer.url}/v2/models/{MODEL}/infer", json={"inputs": inputs}, timeout=10)
    assert (v2.status_code, v2.json()) == (400, {"error": expected})
    with pytest.raises(grpc.RpcError) as refused:
        stub(transformer).ModelInfer(grpc_transactions_request(frame), timeout=10)
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, expected)

    assert scored_rows(transformer) == before  # nothing of a refused batch is scored
    assert stub(transformer).ModelInfer(grpc_transactions_request(good), timeout=10).outputs  # still serving
    assert scored_rows(transformer) == before + 2


def test_payload_events_in_kserve_format_for_rest_and_grpc(trained, stack):
    sink, predictor, transformer = stack["sink"], stack["predictor"], stack["transformer"]
    numeric, categorical = numeric_example()
    with_ids = v2_predictor_json(numeric, categorical, "rest-1")
    with_ids["inputs"].append(
        {"name": "transaction_id", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}
    )
    assert httpx.post(f"{predictor.url}/v2/models/{MODEL}/infer", json=with_ids).status_code == 200
    stub(predictor).ModelInfer(grpc_predictor_request(numeric, categorical, raw=True, request_id="grpc-1"))
    good = v1_instances(requests_at_end(trained, n=2))
    for request_id, body in (("tr-1", {"instances": good}), ("tr-2", {"instances": good[:1]})):
        response = httpx.post(
            f"{transformer.url}/v1/models/{MODEL}:predict", json=body, headers={"x-request-id": request_id}
        )
        assert response.status_code == 200, response.text

    # The transformer logs nothing: it forwards its request id and the transaction ids to the predictor,
    # whose events carry both (one request/response pair per inference).
    expected = [
        ("rest-1", "predictor"),
        ("grpc-1", "predictor"),
        ("tr-1", "predictor"),
        ("tr-2", "predictor"),
    ]

    def key(headers: dict) -> tuple[str, str, str]:
        return headers["ce-id"], headers["ce-type"].rsplit(".", 1)[1], headers["ce-component"]

    def complete(events):
        keys = {key(h) for h, _ in events}
        return all((i, kind, c) in keys for i, c in expected for kind in ("request", "response"))

    events = sink.wait_for(complete)
    by_key = {key(h): (h, json.loads(b)) for h, b in events}
    for event_id, component in expected:
        for kind in ("request", "response"):
            headers, _ = by_key[(event_id, kind, component)]
            assert headers["ce-specversion"] == "1.0"
            assert headers["ce-component"] == component
            assert headers["ce-inferenceservicename"] == "relearn-fraud"
            assert headers["ce-namespace"] == "default" and headers["ce-endpoint"] == "default"
            assert headers["ce-source"].startswith("http://") and headers["ce-time"].endswith("Z")
            assert json.loads(headers["ce-metadata"]) == {}
            assert headers["content-type"] == "application/json"
    for event_id in ("rest-1", "grpc-1"):
        request = by_key[(event_id, "request", "predictor")][1]
        assert [t["name"] for t in request["inputs"]][:2] == ["numeric", "categorical"]
        assert request["inputs"][0]["shape"] == [3, len(NUMERIC_INPUTS)]
        np.testing.assert_allclose(request["inputs"][0]["data"], numeric.ravel(), rtol=1e-6)
        response = by_key[(event_id, "response", "predictor")][1]
        assert response["model_version"] == "1" and response["outputs"][0]["name"] == "score"
    assert [t["data"] for t in by_key[("rest-1", "request", "predictor")][1]["inputs"][2:]] == [
        ["a", "b", "c"]
    ]
    assert len(by_key[("grpc-1", "request", "predictor")][1]["inputs"]) == 2  # sent without ids
    for event_id, rows in (("tr-1", good), ("tr-2", good[:1])):
        request = by_key[(event_id, "request", "predictor")][1]
        assert [t["name"] for t in request["inputs"]] == ["numeric", "categorical", "transaction_id"]
        assert request["inputs"][2] == {
            "name": "transaction_id",
            "datatype": "BYTES",
            "shape": [len(rows)],
            "data": [r["transaction_id"] for r in rows],
        }
        assert len(by_key[(event_id, "response", "predictor")][1]["outputs"][0]["data"]) == len(rows)
    assert not [h for h, _ in sink.events if h["ce-component"] != "predictor"]
    assert set(sink.modes) == {"application/cloudevents-batch+json"}  # the default: batched mode


@pytest.mark.parametrize(
    ("batch_size", "modes"),
    [(1, ["application/json"] * 5), (64, ["application/cloudevents-batch+json"])],
    ids=["binary", "batched"],
)
def test_payload_logger_batches_or_sends_kserve_binary_events(batch_size, modes):
    """batch_size 1: one binary-mode event per POST, as KServe's logger (any sink); above 1: one batch."""
    from relearn.serving.payload_log import LoggerConfig, PayloadLogger

    sink = EventSink()
    logger = PayloadLogger(LoggerConfig(sink_url=sink.url, batch_size=batch_size, queue_size=10))
    try:
        for i in range(5):  # queued before the sender starts: one drain takes them all
            body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [i]}]}
            logger.log_request(f"e{i}", body)
        logger.start()
        events = sink.wait_for(lambda e: len(e) == 5)
    finally:
        logger.stop()
        sink.close()
    assert [h["ce-id"] for h, _ in events] == [f"e{i}" for i in range(5)]
    assert [json.loads(b)["inputs"][0]["data"] for _, b in events] == [[i] for i in range(5)]
    assert all(h["content-type"] == "application/json" and h["ce-specversion"] == "1.0" for h, _ in events)
    assert sink.modes == modes  # the content type of each POST


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_the_full_queue_policy_drops_and_counts_or_waits_and_retries(policy):
    """A sink down for its first 3 POSTs, then slow, behind a queue of 2: drop loses events and counts each
    one (queue_full, sink_error); block loses none — log() waits for room, failed POSTs are sent again."""
    from prometheus_client import REGISTRY

    from relearn.serving.payload_log import LoggerConfig, PayloadLogger

    def dropped(reason: str) -> float:
        labels = {"component": f"test-{policy}", "reason": reason}
        return REGISTRY.get_sample_value("relearn_payload_log_dropped_total", labels) or 0.0

    sink = EventSink(delay=0.02, fail_first=3)
    config = LoggerConfig(sink_url=sink.url, component=f"test-{policy}", queue_size=2, batch_size=4)
    logger = PayloadLogger(replace(config, when_full=policy))
    logger.start()
    try:
        for i in range(40):
            logger.log_request(f"p{i}", {"inputs": []})
    finally:
        logger.stop(timeout=20)
        sink.close()
    got = [h["ce-id"] for h, _ in sink.events]
    lost = dropped("queue_full") + dropped("sink_error")
    if policy == "block":
        assert got == [f"p{i}" for i in range(40)] and lost == 0, (len(got), lost)
    else:
        assert len(got) < 40 and len(got) + lost == 40, (len(got), lost)
        assert dropped("sink_error") > 0 and dropped("queue_full") > 0


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_events_of_answered_requests_across_shutdown(trained, how):
    """SIGTERM: every event of an answered request reaches the (slow) sink before the predictor exits.
    kill -9: what is lost is at most what the queue and one batch in flight hold (the README's bound)."""
    queue_size, batch = 1000, 16
    sink = EventSink(delay=0.2)  # 5 POSTs/s: 300 events take ~4 s to send, so most are queued at the signal
    args = ["--log-sink-url", sink.url, "--log-queue-size", str(queue_size), "--log-batch-size", str(batch)]
    server = Server("relearn.serving.predictor", args, {"RELEARN_HOME": str(trained["home"])},
                    trained["root"] / f"predictor-{how}.log")  # fmt: skip
    try:
        server.start().wait_ready()
        numeric, categorical = numeric_example()
        client = stub(server)
        requests = [grpc_predictor_request(numeric, categorical, True, f"s{i}") for i in range(150)]
        calls = [client.ModelInfer.future(request, timeout=30) for request in requests]
        answered = sum(1 for call in calls if call.result().outputs)
        server.process.send_signal(getattr(signal, how))
        server.process.wait(timeout=60)
        # the sink takes its last POSTs: wait until it is quiet
        seen, quiet_since, killed = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - quiet_since < 1.0 and time.monotonic() - killed < 30:
            if len(sink.events) != seen:
                seen, quiet_since = len(sink.events), time.monotonic()
            time.sleep(0.1)
        received = {h["ce-id"] for h, _ in sink.events if h["ce-id"].startswith("s")}
        events = sum(1 for h, _ in sink.events if h["ce-id"].startswith("s"))
    finally:
        server.stop()
        sink.close()
    assert answered == 150
    if how == "SIGTERM":
        assert events == 2 * answered and len(received) == answered
    else:
        assert 2 * answered - events <= queue_size + max(64, batch), events  # the queue + one taken batch
        lost = 2 * answered - events
        print(f"kill -9 right after {answered} answers: {lost} of {2 * answered} events lost")


def test_dead_sink_does_not_slow_predictions_and_drops_are_counted(stack):
    numeric, categorical = numeric_example()
    request = grpc_predictor_request(numeric, categorical, raw=True)

    def median_latency(server: Server) -> float:
        client = stub(server)
        client.ModelInfer(request, timeout=10)  # warm the channel up
        times = []
        for _ in range(40):
            start = time.perf_counter()
            client.ModelInfer(request, timeout=10)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    live, dead = median_latency(stack["predictor"]), median_latency(stack["dead"])
    assert dead < 3 * live + 0.01, (live, dead)
    metrics = httpx.get(f"{stack['dead'].url}/metrics").text
    dropped = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("relearn_payload_log_dropped_total{")
    )
    assert dropped > 0, metrics


def test_feature_store_outage_is_a_quick_503(trained, stack):
    transformer = stack["transformer"]
    instances = v1_instances(requests_at_end(trained, n=2))
    online = trained["home"] / "online_state.db"  # the streaming state's embedded backend
    lock = sqlite3.connect(online, isolation_level=None, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # readers and writers now block: a state store that hangs
    try:
        start = time.perf_counter()
        response = httpx.post(
            f"{transformer.url}/v1/models/{MODEL}:predict", json={"instances": instances}, timeout=10
        )
        assert response.status_code == 503, response.text
        assert "feature state unavailable" in response.json()["error"]
        assert time.perf_counter() - start < 4
        # gRPC clients get UNAVAILABLE with the same reason, just as quickly.
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as failure:
            stub(transformer).ModelInfer(grpc_transactions_request(requests_at_end(trained, n=2)), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value
        assert "feature state unavailable" in failure.value.details()
        assert time.perf_counter() - start < 4
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # recovers once the store answers again
        ok = httpx.post(
            f"{transformer.url}/v1/models/{MODEL}:predict", json={"instances": instances}, timeout=10
        )
        if ok.status_code == 200:
            break
        time.sleep(0.5)
    assert ok.status_code == 200


def test_batch_scores_match_training_features_and_are_looked_up_in_feast(trained, tmp_path):
    from relearn.features.spec import MODEL_INPUTS
    from relearn.features.store import get_store
    from relearn.model.net import load_model, score
    from relearn.serving.batch import BatchSettings, lookup_scores, refused_path, run
    from relearn.serving.predictor_model import resolve_artifact

    training = pd.read_parquet(trained["summary"]["run_dir"] + "/features/training_set").tail(300)
    tx = ingested(trained)
    tx = tx[tx["transaction_id"].isin(training["transaction_id"])][list(REQUEST_FIELDS)]
    bad = tx.iloc[:1].assign(transaction_id="t-bad", amount=-3.0)  # the data contract: refused, listed
    pd.concat([tx, bad]).to_parquet(tmp_path / "tx.parquet")
    assert len(tx) == len(training)

    summary = run(
        BatchSettings(input=tmp_path / "tx.parquet", output=tmp_path / "scores.parquet", progress=False)
    )
    assert summary["rows"] == len(tx) and summary["model_version"] == "1"
    assert summary["refused"] == f"1 (see {refused_path(tmp_path / 'scores.parquet')})"
    refused = pd.read_parquet(refused_path(tmp_path / "scores.parquet")).iloc[0]
    assert refused["transaction_id"] == "t-bad" and refused["error"].startswith(
        f"row {len(tx)}: field 'amount' must be a number > 0 and <= "
    )
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("transaction_id")

    directory, _ = resolve_artifact(f"models:/{MODEL}@champion", tmp_path / "model")
    net, preprocessor, _ = load_model(directory)
    expected = pd.Series(
        score(net, preprocessor, training[list(MODEL_INPUTS)]), index=training["transaction_id"]
    )
    np.testing.assert_allclose(scores.loc[expected.index, "score"], expected, atol=1e-6)

    ids = expected.index[:5].tolist()
    cached = lookup_scores(get_store(trained["settings"]), [*ids, "never-scored", "t-bad"])
    np.testing.assert_allclose(cached["score"].iloc[:5], expected.iloc[:5], atol=1e-6)
    assert cached["model_version"].iloc[:5].tolist() == ["1"] * 5
    assert cached["score"].iloc[5:].isna().all()


def test_local_stack_serves_the_champion_and_stops_on_ctrl_c(trained, tmp_path):
    from relearn.serving.local import EXAMPLE

    ports = [free_port() for _ in range(6)]
    names = [
        "--transformer-http-port",
        "--transformer-grpc-port",
        "--predictor-http-port",
        "--predictor-grpc-port",
        "--explainer-http-port",
        "--explainer-grpc-port",
    ]
    args = [a for pair in zip(names, map(str, ports), strict=True) for a in pair]
    out = (tmp_path / "local.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "relearn.serving.local", *args],
        env={**os.environ, "RELEARN_HOME": str(trained["home"])},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the fallback below can end the children too
    )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in (tmp_path / "local.out").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "local.out"
            ).read_text()
            time.sleep(0.3)
        printed = (tmp_path / "local.out").read_text()
        assert f"http://127.0.0.1:{ports[0]}/v1/models/{MODEL}:predict" in printed and "grpcurl" in printed
        response = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/models/{MODEL}:predict",
            json={"instances": [EXAMPLE]},
            timeout=10,
        )
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        url = f"http://127.0.0.1:{ports[4]}/v1/models/{MODEL}:explain"
        explained = httpx.post(url, json={"instances": [EXAMPLE]}, timeout=10)
        assert explained.status_code == 200, explained.text  # the explainer came up with the stack
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        for port in ports[::2]:  # the children are gone: nothing answers any more
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        out.close()


def test_standard_v2_clients_over_rest_json_and_binary(stack):
    """NVIDIA's tritonclient in JSON and binary mode, and curl with its default (form) content type."""
    import tritonclient.http as triton

    predictor, (numeric, categorical) = stack["predictor"], numeric_example()
    client = triton.InferenceServerClient(predictor.url.removeprefix("http://"))
    scores = []
    for binary in (False, True):
        inputs = [
            triton.InferInput("numeric", list(numeric.shape), "FP32"),
            triton.InferInput("categorical", list(categorical.shape), "BYTES"),
        ]
        inputs[0].set_data_from_numpy(numeric, binary_data=binary)
        inputs[1].set_data_from_numpy(categorical, binary_data=binary)
        outputs = [triton.InferRequestedOutput("score", binary_data=binary)]
        scores.append(client.infer(MODEL, inputs, outputs=outputs).as_numpy("score"))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)
    # The open inference protocol: no Inference-Header-Content-Length means a JSON body, whatever the type.
    body = json.dumps(v2_predictor_json(numeric, categorical))
    url = f"{predictor.url}/v2/models/{MODEL}/infer"
    curl = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-d", body, url], capture_output=True, text=True, check=False
    )
    answer, status = curl.stdout.rsplit("\n", 1)
    assert status == "200", answer
    np.testing.assert_allclose(json.loads(answer)["outputs"][0]["data"], scores[0], rtol=1e-6)


def test_a_body_failing_validation_is_a_400_naming_the_field_even_with_nan(stack):
    # FastAPI's default 422 echoes the input and broke on NaN (a 500); the next kept-alive request was reset.
    body = b'{"inputs": [{"name": "numeric", "shape": "3x17", "datatype": "FP32", "data": [NaN, Infinity]}]}'
    with httpx.Client(base_url=stack["predictor"].url) as client:
        for _ in range(3):
            response = client.post(f"/v2/models/{MODEL}/infer", content=body)
            assert response.status_code == 400, response.text
            assert "inputs.0.shape" in response.json()["error"]
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
