"""Baseline (c) of the serving benchmark: a default KServe ``ModelServer`` with a plain ``kserve.Model``.

Written the way KServe's custom-model docs show it: ``load()`` reads the artifact, ``predict()`` takes the
``InferRequest``, turns its inputs into numpy arrays, builds the tensors, runs the network and returns an
``InferResponse``. No batching tricks, no raw-content fast path: what a user gets out of the box.
It takes the same request as relearn's predictor (``numeric`` FP32 [N, 17], ``categorical`` BYTES [N, 6]).

Usage: ``python -m benchmarks.serving_kserve --model-dir DIR --http_port P --grpc_port G`` (other
``kserve.ModelServer`` flags pass through).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import pandas as pd
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from relearn.model.net import load_model, predict_logits

NAME = "relearn-fraud"
HOST = "127.0.0.1"


class DefaultFraudModel(Model):
    """The fraud network behind a plain ``kserve.Model``."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.net, self.preprocessor, metadata = load_model(self.model_dir)
        self.threshold = float(metadata.get("threshold", 0.5))
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        numeric = payload.inputs[0].as_numpy()
        categorical = payload.inputs[1].as_numpy()
        frame = pd.DataFrame(numeric, columns=list(NUMERIC_INPUTS))
        for j, name in enumerate(CATEGORICAL_INPUTS):
            frame[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in categorical[:, j]]
        numeric_t, categorical_t = self.preprocessor.transform(frame)
        scores = torch.sigmoid(predict_logits(self.net, numeric_t, categorical_t)).numpy()
        outputs = [
            InferOutput(name="score", shape=[len(scores)], datatype="FP32", data=scores.tolist()),
            InferOutput(
                name="decision",
                shape=[len(scores)],
                datatype="BOOL",
                data=(scores >= self.threshold).tolist(),
            ),
        ]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=str(uuid.uuid4()))


def bind_loopback() -> None:
    """KServe's ModelServer binds 0.0.0.0 / [::]; rebind its REST and gRPC servers to 127.0.0.1 only."""
    import types

    import uvicorn
    from kserve.protocol.grpc import server as grpc_server

    original_config = uvicorn.Config.__init__

    def config(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = HOST
        original_config(self, *args, **kwargs)

    uvicorn.Config.__init__ = config  # type: ignore[method-assign]
    original_server = grpc_server.aio.server

    def server(*args: Any, **kwargs: Any) -> Any:
        instance = original_server(*args, **kwargs)
        add = instance.add_insecure_port
        instance.add_insecure_port = lambda address: add(address.replace("[::]", HOST))
        return instance

    grpc_server.aio = types.SimpleNamespace(server=server)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model-dir", required=True)
    args, _ = parser.parse_known_args()
    bind_loopback()
    ModelServer().start([DefaultFraudModel(NAME, args.model_dir)])


if __name__ == "__main__":
    main()
