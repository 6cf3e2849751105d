"""Fuzz the predictor: REST v1 and v2 infer, gRPC ModelInfer and the gRPC health/metadata methods."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from fuzz.fuzz_checks import V1, V2, assert_predictor_answers, connected, grpc_send, rows_of, serving_endpoint
from fuzz.fuzz_grpc import infer_calls, metadata_calls
from fuzz.fuzz_harness import Endpoint, fuzz
from fuzz.fuzz_strategies import encoded, predictor_specs, predictor_v1, predictor_v2

pytestmark = pytest.mark.slow

# Other routes now and then: an unknown model, a route without POST. Not /versions/<v>/infer: KServe answers
# 501 "Model versioning not supported yet" there, by design (see README, Fuzzing).
PATHS = {
    "v1": st.sampled_from([V1] * 9 + ["/v1/models/nope:predict", "/v1/models/relearn-fraud"]),
    "v2": st.sampled_from([V2] * 9 + ["/v2/models/nope/infer", "/v2/models/relearn-fraud/ready"]),
}


@pytest.fixture(scope="module")
def clients(fuzz_stack):
    with connected(fuzz_stack.predictor.url, fuzz_stack.predictor.grpc_target) as both:
        yield both


def endpoint(stack, clients, name: str) -> Endpoint:
    return serving_endpoint(
        name,
        [stack.predictor.log_path],
        stack.predictor.url,
        "predictor",
        lambda: assert_predictor_answers(*clients, stack.pool),
    )


@pytest.mark.parametrize(("protocol", "bodies"), [("v1", predictor_v1()), ("v2", predictor_v2)])
def test_rest(fuzz_stack, clients, protocol, bodies):
    def send(case) -> tuple[str, int | None]:
        status, body = clients[0].post(*case)
        return str(status), rows_of(status, body)

    fuzz(
        endpoint(fuzz_stack, clients, f"predictor REST {protocol}"),
        st.tuples(PATHS[protocol], encoded(bodies)),
        send,
    )


def test_grpc_infer(fuzz_stack, clients):
    send = lambda call: grpc_send(clients[1], call)  # noqa: E731
    fuzz(endpoint(fuzz_stack, clients, "predictor gRPC ModelInfer"), infer_calls(predictor_specs), send)


def test_grpc_metadata(fuzz_stack, clients):
    send = lambda call: grpc_send(clients[1], call)  # noqa: E731
    fuzz(endpoint(fuzz_stack, clients, "predictor gRPC health/metadata"), metadata_calls(), send)
