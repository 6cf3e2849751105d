"""What KServe hands the servers (the args its controller appends, a v2 request) and the contract's answer."""

from __future__ import annotations

from kserve import InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from pydantic_settings import CliApp

from relearn.data.schema import REQUEST_FIELDS
from relearn.serving.config import kserve_args

# CustomTransformer.GetContainer (KServe pkg/apis/serving/v1beta1/transformer_custom.go): model name = the
# InferenceService's, predictor host = "<isvc>-predictor.<ns>" without a port, workers = containerConcurrency.
INJECTED = ["--model_name", "relearn-fraud", "--predictor_host", "relearn-fraud-predictor.relearn"]
INJECTED += ["--http_port", "8080", "--workers", "0"]

# Every consumer of the data contract refuses an amount of -3.0 EUR in these words.
MESSAGE = "field 'amount' must be a number > 0 and <= 50000 for currency EUR (got -3.0)"


def parse(settings: type, argv: list[str]):
    """The settings a server would start with for argv (parsed the way it parses them, without serving)."""

    class Probe(settings):
        def cli_cmd(self) -> None:  # parse only: do not serve
            pass

    return CliApp.run(Probe, cli_args=kserve_args(argv, Probe))


def v2_request(instances: list[dict]) -> InferRequest:
    """Request rows as one v2 (gRPC-decoded) InferRequest: amount FP64, every other field BYTES."""
    request = pb.ModelInferRequest(model_name="relearn-fraud", id="x")
    for name in REQUEST_FIELDS:
        tensor = request.inputs.add(name=name, shape=[len(instances)])
        if name == "amount":
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(float(r[name]) for r in instances)
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(str(r.get(name) or "").encode() for r in instances)
    return InferRequest.from_grpc(request)
