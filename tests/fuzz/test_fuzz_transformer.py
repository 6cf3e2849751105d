"""Fuzz the transformer: REST v1 and v2 infer, and its gRPC service (ModelInfer, health and metadata)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from fuzz.fuzz_checks import (
    V1,
    V2,
    assert_transformer_answers,
    connected,
    grpc_send,
    rows_of,
    serving_endpoint,
)
from fuzz.fuzz_grpc import infer_calls, metadata_calls
from fuzz.fuzz_harness import Endpoint, fuzz
from fuzz.fuzz_strategies import encoded, transformer_specs, transformer_v1, transformer_v2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clients(fuzz_stack):
    with connected(fuzz_stack.transformer.url, fuzz_stack.transformer.grpc_target) as both:
        yield both


def endpoint(stack, clients, name: str) -> Endpoint:
    """The transformer's own counters; its log and the predictor's (which must see no bad request)."""
    return serving_endpoint(
        name,
        [stack.transformer.log_path, stack.predictor.log_path],
        stack.transformer.url,
        "transformer",
        lambda: assert_transformer_answers(*clients),
    )


@pytest.mark.parametrize(("path", "bodies"), [(V1, transformer_v1()), (V2, transformer_v2)], ids=["v1", "v2"])
def test_rest(fuzz_stack, clients, path, bodies):
    def send(case) -> tuple[str, int | None]:
        status, body = clients[0].post(path, case)
        return str(status), rows_of(status, body)

    protocol = path.split("/")[1]
    fuzz(endpoint(fuzz_stack, clients, f"transformer REST {protocol}"), encoded(bodies), send)


def test_grpc(fuzz_stack, clients):
    send = lambda call: grpc_send(clients[1], call)  # noqa: E731
    calls = st.one_of(infer_calls(transformer_specs), metadata_calls())
    fuzz(endpoint(fuzz_stack, clients, "transformer gRPC"), calls, send)
