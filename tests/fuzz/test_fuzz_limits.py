"""Messages over a gRPC server's receive limit: RESOURCE_EXHAUSTED (or INVALID_ARGUMENT), never a crash."""

from __future__ import annotations

import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from fuzz.fuzz_checks import INFER, assert_predictor_answers, assert_transformer_answers
from fuzz.fuzz_harness import Grpc, Rest
from fuzz.fuzz_stack import MODEL
from relearn.serving.server import GRPC_MAX_MESSAGE

pytestmark = pytest.mark.slow

GRPC_DEFAULT_MAX = 4 * 1024 * 1024  # grpc.aio.server() without options: the router's limit


@pytest.mark.parametrize(
    ("server", "limit"),
    [("predictor", GRPC_MAX_MESSAGE), ("transformer", GRPC_MAX_MESSAGE), ("router", GRPC_DEFAULT_MAX)],
)
def test_oversize_message(fuzz_stack, server, limit):
    target = fuzz_stack.router_grpc if server == "router" else getattr(fuzz_stack, server).grpc_target
    url = fuzz_stack.router.url if server == "router" else getattr(fuzz_stack, server).url
    request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * (limit + 1024)])
    channel, rest = Grpc(target), Rest(url)
    try:
        code, _ = channel.call(INFER, request.SerializeToString(), timeout=60)
        assert code.name in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"), code
        if server == "transformer":
            assert_transformer_answers(rest, channel)  # the same channel: its connection is still good
        else:
            assert_predictor_answers(rest, channel, fuzz_stack.pool)
    finally:
        channel.close()
        rest.close()
