"""Fuzz the rollout router (REST and gRPC) in front of the predictor, its stable version."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from fuzz.fuzz_checks import V1, V2, assert_predictor_answers, connected, grpc_send, rows_of, serving_endpoint
from fuzz.fuzz_grpc import infer_calls, metadata_calls
from fuzz.fuzz_harness import Endpoint, fuzz
from fuzz.fuzz_strategies import encoded, predictor_specs, predictor_v1, predictor_v2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clients(fuzz_stack):
    with connected(fuzz_stack.router.url, fuzz_stack.router_grpc) as both:
        yield both


def endpoint(stack, clients, name: str) -> Endpoint:
    """The predictor's counters (the router has none); the router's log and the predictor's."""
    return serving_endpoint(
        name,
        [stack.router.log_path, stack.predictor.log_path],
        stack.predictor.url,
        "predictor",
        lambda: assert_predictor_answers(*clients, stack.pool),
    )


def test_rest(fuzz_stack, clients):
    def send(case) -> tuple[str, int | None]:
        status, body = clients[0].post(*case)
        return str(status), rows_of(status, body)

    cases = st.tuples(st.just(V1), encoded(predictor_v1())) | st.tuples(st.just(V2), encoded(predictor_v2))
    fuzz(endpoint(fuzz_stack, clients, "router REST"), cases, send)


def test_grpc(fuzz_stack, clients):
    send = lambda call: grpc_send(clients[1], call)  # noqa: E731
    calls = st.one_of(infer_calls(predictor_specs), metadata_calls())
    fuzz(endpoint(fuzz_stack, clients, "router gRPC"), calls, send)
