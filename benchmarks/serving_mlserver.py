"""Baseline (d) of the serving benchmark: Seldon MLServer serving the same fraud network.

A custom MLServer runtime (an ``MLModel`` subclass, as MLServer's custom-runtime guide shows): ``load()``
reads the torch artifact named by the model settings' ``parameters.uri``, ``predict()`` decodes the request
with MLServer's ``NumpyCodec`` / ``StringCodec``, builds the tensors, runs the network and encodes
``score`` and ``decision``.
It takes the same request as relearn's predictor (``numeric`` FP32 [N, 17], ``categorical`` BYTES [N, 6]).

It runs in its own environment (``.venv/mlserver``, ``requirements/mlserver.txt``) with ``PYTHONPATH``
holding the repository root and ``src``; :func:`write_model_repository` (platform side, no mlserver import)
writes the ``settings.json`` / ``model-settings.json`` that ``mlserver start <dir>`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

NAME = "relearn-fraud"
HOST = "127.0.0.1"


def write_model_repository(
    directory: Path, model_dir: Path, http_port: int, grpc_port: int, metrics_port: int
) -> Path:
    """Server and model settings for ``mlserver start directory`` (loopback only, MLServer's defaults)."""
    directory.mkdir(parents=True, exist_ok=True)
    server = {
        "host": HOST,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
    }
    (directory / "settings.json").write_text(json.dumps(server, indent=2))
    model = {
        "name": NAME,
        "implementation": "benchmarks.serving_mlserver.FraudRuntime",
        "parameters": {"uri": str(model_dir), "version": "1"},
    }
    (directory / "model-settings.json").write_text(json.dumps(model, indent=2))
    return directory


try:
    import pandas as pd
    import torch
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # the platform environment writes the settings only
    MLModel = object  # type: ignore[assignment,misc]


class FraudRuntime(MLModel):  # type: ignore[misc,valid-type]
    """The fraud network as a custom MLServer runtime."""

    async def load(self) -> bool:
        from relearn.model.net import load_model

        self.net, self.preprocessor, metadata = load_model(self.settings.parameters.uri)
        self.threshold = float(metadata.get("threshold", 0.5))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
        from relearn.model.net import predict_logits

        numeric = NumpyCodec.decode_input(payload.inputs[0])
        frame = pd.DataFrame(numeric.reshape(len(numeric), -1), columns=list(NUMERIC_INPUTS))
        # BYTES: MLServer's StringCodec (NumpyCodec reads gRPC bytes_contents as one raw buffer).
        categorical = StringCodec.decode_input(payload.inputs[1])
        for j, name in enumerate(CATEGORICAL_INPUTS):
            frame[name] = categorical[j :: len(CATEGORICAL_INPUTS)]
        numeric_t, categorical_t = self.preprocessor.transform(frame)
        scores = torch.sigmoid(predict_logits(self.net, numeric_t, categorical_t)).numpy()
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("score", scores),
                NumpyCodec.encode_output("decision", scores >= self.threshold),
            ],
        )
