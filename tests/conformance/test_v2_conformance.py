"""Open inference protocol v2, REST and gRPC: every standard client against the predictor, the transformer
and the rollout router. Test ids read ``<client>-v2-<protocol>-<endpoint>``.

Health, metadata, infer, and errors with the same semantics on both protocols: an unknown model is a 404
``{"error": ...}`` / NOT_FOUND, a bad input a 400 ``{"error": ...}`` / INVALID_ARGUMENT naming the input,
with the same message.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from conformance.cases import (
    ENDPOINTS,
    MODEL,
    THRESHOLD,
    UNKNOWN,
    UNKNOWN_MODEL,
    VERSION,
    bad_shape,
    contract,
    inputs,
    metadata,
    outputs,
)
from conformance.clients import Failure, all_clients

pytestmark = pytest.mark.slow

CLIENTS = all_clients()
# How each client's infer answers come back (None: the client does not say).
BINARY_OUTPUTS = {
    "curl": False,
    "tritonclient.http.json": False,
    "tritonclient.http.binary": True,
    "tritonclient.grpc.raw": True,
    "tritonclient.grpc.typed": False,
    "grpc.reflection.json": False,
}

# Infer defects outside this suite's files, reported to their owners: (client, endpoint) -> reason.
INFER_DEFECTS: dict[tuple[str, str], str] = {}


def cell(test: str, params: dict) -> tuple[str, str, str]:
    """This module's tests in the conformance table: (client, route, endpoint)."""
    protocol = {"rest": "v2 REST", "grpc": "v2 gRPC"}[
        next(c for c in CLIENTS if c.name == params["client"]).protocol
    ]
    return params["client"], protocol, params["endpoint"]


def cells(*ops: str, defects: dict | None = None) -> list:
    """(client, endpoint[, op]) for every client that has the op, id ``[op-]client-v2-protocol-endpoint``;
    a known defect is a strict xfail."""
    defects = defects or {}
    return [
        pytest.param(
            c.name,
            e,
            *([op] if len(ops) > 1 else []),
            id=f"{prefix}{c.name}-v2-{c.protocol}-{e}",
            marks=[pytest.mark.xfail(strict=True, reason=defects[c.name, e])]
            if (c.name, e) in defects
            else [],
        )
        for op in ops
        for prefix in ([f"{op}-"] if len(ops) > 1 else [""])
        for c in CLIENTS
        if op in c.ops
        for e in ENDPOINTS
    ]


def refused(
    failure: Failure, protocol: str, status: int, code: str, message: str | None, field: str = ""
) -> None:
    """The refusal a client saw: status or code by protocol, the message (exact, or naming ``field``), and
    an open-inference error body."""
    assert failure.code == (status if protocol == "rest" else code), failure
    assert failure.message == message if message is not None else f"'{field}'" in failure.message
    if failure.body is not None:  # the client shows the raw body (curl): exactly {"error": "..."}
        assert failure.body == {"error": failure.message}
        assert failure.content_type == "application/json"


@pytest.mark.parametrize("client, endpoint", cells("live"))
def test_health(clients, stack, client, endpoint):
    c = clients[client]
    address = c.address(stack[endpoint])
    assert c.live(address) is True
    assert c.ready(address) is True
    assert c.model_ready(address, MODEL) is True


@pytest.mark.parametrize("client, endpoint", cells("server_metadata"))
def test_server_metadata(clients, stack, client, endpoint):
    c = clients[client]
    meta = c.server_metadata(c.address(stack[endpoint]))
    assert meta["name"] == "kserve"
    assert isinstance(meta["version"], str) and meta["version"]
    assert isinstance(meta.get("extensions", []), list)


@pytest.mark.parametrize("client, endpoint", cells("model_metadata"))
def test_model_metadata(clients, stack, client, endpoint):
    c = clients[client]
    meta = c.model_metadata(c.address(stack[endpoint]), MODEL)
    assert {k: meta[k] for k in ("name", "inputs", "outputs")} == metadata(endpoint)


@pytest.mark.parametrize("client, endpoint", cells("infer", defects=INFER_DEFECTS))
def test_infer(clients, stack, expected_scores, client, endpoint):
    c = clients[client]
    sent, request_id = inputs(endpoint), f"conformance-{uuid.uuid4().hex[:8]}"
    reply = c.infer(c.address(stack[endpoint]), MODEL, sent, outputs(endpoint), request_id)
    assert sorted(reply["outputs"]) == sorted(outputs(endpoint))
    scores = np.array(reply["outputs"]["score"], dtype=np.float32)
    np.testing.assert_allclose(scores, expected_scores[contract(endpoint)], atol=1e-6, rtol=0)
    assert reply["outputs"]["decision"] == (scores >= THRESHOLD).tolist()
    if contract(endpoint) == "transformer":
        assert reply["outputs"]["transaction_id"] == sent[0].array.tolist()
    if client != "kserve.rest":  # KServe 0.21's InferResponse.from_bytes drops model_version (client side)
        assert reply["model_version"] == VERSION
    assert reply["id"] == request_id
    if BINARY_OUTPUTS.get(client) is not None:  # binary asked, binary answered (and JSON for JSON)
        assert reply["binary"] is BINARY_OUTPUTS[client]


@pytest.mark.parametrize("client, endpoint, op", cells("infer", "model_ready", "model_metadata"))
def test_unknown_model(clients, stack, client, endpoint, op):
    c = clients[client]
    address = c.address(stack[endpoint])
    calls = {
        "infer": lambda: c.infer(address, UNKNOWN, inputs(endpoint), outputs(endpoint), "unknown"),
        "model_ready": lambda: c.model_ready(address, UNKNOWN),
        "model_metadata": lambda: c.model_metadata(address, UNKNOWN),
    }
    try:
        answer = calls[op]()
    except Failure as failure:
        refused(failure, c.protocol, 404, "NOT_FOUND", UNKNOWN_MODEL)
    else:  # REST libraries read a 4xx from /ready as "not ready", as the protocol says
        assert (op, c.protocol, answer) == ("model_ready", "rest", False) and client != "curl"


@pytest.mark.parametrize("client, endpoint", cells("infer"))
def test_bad_input_names_the_input(clients, stack, client, endpoint):
    c = clients[client]
    sent, field, message = bad_shape(endpoint)
    with pytest.raises(Failure) as info:
        c.infer(c.address(stack[endpoint]), MODEL, sent, outputs(endpoint), "bad-shape")
    refused(info.value, c.protocol, 400, "INVALID_ARGUMENT", message, field)
