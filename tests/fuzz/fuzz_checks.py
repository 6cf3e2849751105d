"""The after-run checks the predictor, the transformer and the router share: counters and valid answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from fuzz.fuzz_harness import Endpoint, Grpc, Rest, Tally
from fuzz.fuzz_stack import MODEL, scrape, total
from support.rollout_stack import Pool, grpc_request, v2_request

JSON = {"content-type": "application/json"}
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def serving_counters(url: str, component: str) -> dict[str, float]:
    """A serving component's scored requests and rows, and its requests that failed as server errors."""
    samples = scrape(url)
    requests = "relearn_serving_requests_total"
    return {
        "ok": total(samples, requests, component=component, outcome="ok"),
        "error": total(samples, requests, component=component, outcome="error"),
        "rows": total(samples, "relearn_serving_rows_total", component=component),
    }


@contextmanager
def connected(url: str, grpc_target: str) -> Iterator[tuple[Rest, Grpc]]:
    """One kept-alive REST connection and one gRPC channel to a server, closed after the module."""
    rest, channel = Rest(url), Grpc(grpc_target)
    try:
        yield rest, channel
    finally:
        rest.close()
        channel.close()


def serving_endpoint(
    name: str, logs: list[Path], url: str, component: str, healthy: Callable[[], None]
) -> Endpoint:
    """A serving endpoint: ``component``'s request and row counters at ``url`` move by the rows scored."""
    return Endpoint(name, logs, lambda: serving_counters(url, component), scored, healthy)


def scored(tally: Tally) -> dict[str, float]:
    """Expected counter moves: every accepted request with rows, and its rows; no server error."""
    return {"ok": float(tally.scored), "error": 0.0, "rows": float(tally.units)}


def rows_of(status: int, body: bytes) -> int | None:
    """Rows of a 200 v1/v2 JSON answer (None for a rejection)."""
    if status != 200:
        return None
    answer = json.loads(body)
    return len(answer["predictions"]) if "predictions" in answer else answer["outputs"][0]["shape"][0]


def grpc_send(channel: Grpc, call: Any) -> tuple[str, int | None]:
    """Make a fuzz :class:`~fuzz_grpc.Call`: its status, and for an answer the rows it scored (0: none)."""
    code, response = channel.call(call.method, call.request)
    if response is None:
        return code.name, None
    if call.method != INFER:
        return code.name, 0
    return code.name, pb.ModelInferResponse.FromString(response).outputs[0].shape[0]


def assert_predictor_answers(rest: Rest, channel: Grpc, pool: Pool) -> None:
    """v1, v2 and gRPC requests of the pool's first rows get the scores the model gave them."""
    body = v2_request(pool.numeric[0], "after-fuzz")
    status, data = rest.send("POST", V2, json.dumps(body).encode(), JSON)
    assert status == 200, data
    score = json.loads(data)["outputs"][0]["data"][0]
    np.testing.assert_allclose(score, pool.scores[0], atol=1e-6)
    code, reply = channel.call(INFER, grpc_request(pool.numeric[1], "after-fuzz").SerializeToString())
    assert code.name == "OK"
    got = np.frombuffer(pb.ModelInferResponse.FromString(reply).raw_output_contents[0], np.float32)
    np.testing.assert_allclose(got, pool.scores[1:2], atol=1e-6)


def transaction(transaction_id: str) -> dict[str, Any]:
    """A valid raw transaction of now."""
    return {
        "transaction_id": transaction_id,
        "event_timestamp": datetime.now(UTC).isoformat(),
        "user_id": "u-after-fuzz",
        "merchant_id": "m1",
        "amount": 12.5,
        "currency": "EUR",
        "merchant_category": "grocery",
        "channel": "pos",
        "country": "DE",
        "device_id": "d1",
    }


def assert_transformer_answers(rest: Rest, channel: Grpc) -> None:
    """A v1 and a gRPC request of one new transaction each get its id back with a score."""
    tid = str(uuid.uuid4())
    status, data = rest.send("POST", V1, json.dumps({"instances": [transaction(tid)]}).encode(), JSON)
    assert status == 200, data
    (prediction,) = json.loads(data)["predictions"]
    assert prediction["transaction_id"] == tid and 0.0 <= prediction["score"] <= 1.0, prediction
    tid = str(uuid.uuid4())
    request = pb.ModelInferRequest(model_name=MODEL)
    for name, value in transaction(tid).items():
        tensor = request.inputs.add(name=name, datatype="FP64" if name == "amount" else "BYTES", shape=[1])
        if name == "amount":
            tensor.contents.fp64_contents.append(value)
        else:
            tensor.contents.bytes_contents.append(value.encode())
    code, reply = channel.call(INFER, request.SerializeToString())
    assert code.name == "OK", code
    outputs = {o.name: o for o in pb.ModelInferResponse.FromString(reply).outputs}
    assert list(outputs["transaction_id"].contents.bytes_contents) == [tid.encode()]
