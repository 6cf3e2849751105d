"""A model server stopped by SIGTERM (the kubelet's stop) drains the request in flight and exits 0.

A real predictor process (the served champion, its payload logger on a real HTTP sink): a REST request
whose body is only half sent when the signal lands must still be answered, new connections must be refused
meanwhile, and the events of the answered request must reach the sink before the process exits.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time

import httpx
import numpy as np

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from relearn.serving.tensors import v2_json
from support.serving_stack import EventSink, Server

MODEL = "relearn-fraud"


def _body(request_id: str) -> bytes:
    rng = np.random.default_rng(0)
    numeric = rng.uniform(0, 3, size=(2, len(NUMERIC_INPUTS))).astype(np.float32)
    categorical = np.array([["grocery", "pos", "DE", "EUR", "13"]] * 2, dtype=object)
    assert categorical.shape[1] == len(CATEGORICAL_INPUTS)
    inputs = [
        ("numeric", "FP32", numeric.shape, numeric),
        ("categorical", "BYTES", categorical.shape, categorical),
    ]
    return json.dumps(v2_json(inputs, request_id)).encode()


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_drains_the_request_in_flight_then_the_payload_log_and_exits_0(trained) -> None:
    sink = EventSink()
    args = ["--log-sink-url", sink.url, "--log-batch-size", "1", "--grace-seconds", "10"]
    server = Server(
        "relearn.serving.predictor",
        args,
        {"RELEARN_HOME": str(trained["home"])},
        trained["root"] / "drain.log",
    )
    try:
        server.start().wait_ready()
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{MODEL}/infer"
        warm = httpx.post(
            url, content=_body("warm-up"), headers={"content-type": "application/json"}, timeout=30
        )
        assert warm.status_code == 200, (
            warm.text
        )  # the first inference's one-off work is done before the test
        body = _body("inflight")
        half = len(body) // 2
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        connection.putrequest("POST", f"/v2/models/{MODEL}/infer")
        connection.putheader("content-type", "application/json")
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body[:half])
        time.sleep(1.0)  # the server has the headers: the request is in flight, waiting for its body
        server.process.send_signal(signal.SIGTERM)
        # New calls are refused at once (REST and gRPC) while the one in flight is still being served.
        assert _until(lambda: _refuses(server.http_port) and _refuses(server.grpc_port), 5)
        assert server.process.poll() is None
        connection.send(body[half:])
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        assert answer["id"] == "inflight" and answer["outputs"], answer
        assert server.process.wait(timeout=30) == 0, server.log_path.read_text()[-3000:]
        kinds = sorted(h["ce-type"] for h, _ in sink.events if h["ce-id"] == "inflight")
        assert kinds == sorted([REQUEST_TYPE, RESPONSE_TYPE]), sink.events
    finally:
        server.stop()
        sink.close()
