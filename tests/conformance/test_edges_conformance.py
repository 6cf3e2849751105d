"""The protocol's edges: error bodies curl shows raw, gRPC errors below any client, server reflection.

* REST: every error is ``{"error": "..."}`` (application/json) — bad JSON, unknown routes and methods too.
* gRPC: undecodable protobuf is INVALID_ARGUMENT, an unknown method UNIMPLEMENTED (grpcio, raw bytes).
* Reflection (grpcio-reflection's client, and one stream of several requests as grpcurl sends): the
  service and its methods are listed and described without a proto file, through the router too.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conformance.cases import ENDPOINTS, MODEL
from conformance.clients import Curl

pytestmark = pytest.mark.slow

SERVICE = "inference.GRPCInferenceService"
OIP_METHODS = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
REST_ERRORS = {
    # case: (method, path, curl -d body, status, message)
    "malformed-json": (
        "POST",
        f"/v2/models/{MODEL}/infer",
        "{bad",
        400,
        "body: not valid JSON at position 1: Expecting property name enclosed in double quotes",
    ),
    "unknown-route": ("GET", "/v2/no-such-route", None, 404, "Not Found: GET /v2/no-such-route"),
    "wrong-method": ("DELETE", "/v2/health/live", None, 405, "Method Not Allowed: DELETE /v2/health/live"),
}


def cell(test: str, params: dict) -> tuple[str, str, str]:
    """This module's tests in the conformance table: (client, route, endpoint)."""
    if test.startswith("test_rest"):
        return "curl", "v2 REST errors: bad JSON, unknown route, wrong method", params["endpoint"]
    if test.startswith("test_grpc"):
        return "grpcio (raw bytes)", "v2 gRPC errors: bad protobuf, unknown method", params["endpoint"]
    return "grpc.reflection", "reflection: list, describe, one stream", params["endpoint"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", REST_ERRORS)
def test_rest_error_body_is_oip(stack, case, endpoint):
    method, path, data, status, message = REST_ERRORS[case]
    got = Curl().request(stack[endpoint].url + path, data, method if method != "POST" else None)
    assert got == (status, "application/json", {"error": message})


def _raw_call(target: str, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(payload, timeout=10)
    return info.value


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_grpc_malformed_protobuf_is_invalid_argument(stack, endpoint):
    error = _raw_call(stack[endpoint].grpc, f"/{SERVICE}/ModelInfer", b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("malformed ModelInferRequest: ")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_grpc_unknown_method_is_unimplemented(stack, endpoint):
    error = _raw_call(stack[endpoint].grpc, f"/{SERVICE}/NoSuchMethod", b"")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_reflection_lists_and_describes_the_service(stack, endpoint):
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(stack[endpoint].grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE in database.get_services()
        service = descriptor_pool.DescriptorPool(database).FindServiceByName(SERVICE)
        assert set(service.methods_by_name) >= OIP_METHODS
        infer = service.methods_by_name["ModelInfer"]
        assert (infer.input_type.full_name, infer.output_type.full_name) == (
            "inference.ModelInferRequest",
            "inference.ModelInferResponse",
        )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_reflection_answers_every_request_of_one_stream(stack, endpoint):
    """grpcurl lists and describes over one stream: each request gets its answer, in order."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    with grpc.insecure_channel(stack[endpoint].grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    kinds = [a.WhichOneof("message_response") for a in answers]
    assert kinds == ["list_services_response", "file_descriptor_response"]
    assert SERVICE in {s.name for s in answers[0].list_services_response.service}
