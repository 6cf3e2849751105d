"""The predictor: the registered fraud network as a flat ``kserve.Model``, one forward pass per batch.

Tensor interface (v2; see :mod:`relearn.serving.tensors`): inputs ``numeric`` FP32 ``[N, 17]``,
``categorical`` BYTES ``[N, 5]`` and, optionally, ``transaction_id`` BYTES ``[N]`` (logged, not scored);
outputs ``score`` FP32 ``[N]`` and ``decision`` BOOL ``[N]``; the response's ``model_version`` is the
registered MLflow version. v1 (``/v1/models/<m>:predict``) takes ``{"instances": [{<MODEL_INPUTS>,
"transaction_id"?}, ...]}`` and answers ``{"predictions": [{"score", "decision"}], "model_version"}``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from kserve import InferRequest, InferResponse, Model

from relearn.errors import outcome_of
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.model.net import CONFIG_FILE, load_model, predict_logits
from relearn.model.registry import TORCH_ARTIFACT
from relearn.serving import tensors
from relearn.serving.config import PredictorSettings
from relearn.serving.errors import InvalidInput
from relearn.serving.metrics import REQUESTS, ROWS, STAGE_SECONDS, track_of
from relearn.serving.payload_log import LoggerConfig, PayloadLogger, event_route
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)
OUTPUTS = [meta["name"] for meta in tensors.OUTPUT_METADATA]


def resolve_artifact(model_uri: str, workdir: Path, version: str | None = None) -> tuple[Path, str]:
    """The local torch artifact directory for ``model_uri`` and the model version it is.

    Args:
        model_uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or a local directory holding
            the torch artifact (``config.json``) or a pyfunc model (``artifacts/torch_model``).
        workdir: Where an MLflow model is downloaded to.
        version: The version to report for a local directory (default: ``version`` file, else ``local``).
    """
    if not model_uri.startswith("models:/"):
        path = Path(model_uri).expanduser().resolve()
        for candidate in (path, path / "artifacts" / TORCH_ARTIFACT):
            if (candidate / CONFIG_FILE).exists():
                marker = path / "version"
                found = marker.read_text().strip() if marker.exists() else "local"
                return candidate, version or found
        raise FileNotFoundError(f"no relearn model artifact under {path}")
    import mlflow
    from mlflow import MlflowClient

    settings = RelearnSettings()
    mlflow.set_tracking_uri(settings.tracking_uri())
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    if ref:
        resolved = str(client.get_model_version_by_alias(name, ref).version)
    else:
        name, _, resolved = name.partition("/")
    # Download by number, not alias: the alias could move between the lookup and the download.
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{resolved}", dst_path=str(workdir))
    return Path(local) / "artifacts" / TORCH_ARTIFACT, resolved


class FraudPredictor(Model):
    """v1/v2 predictor around :class:`relearn.model.net.FraudNet` (batch in, one forward pass)."""

    def __init__(self, settings: PredictorSettings, payload_logger: PayloadLogger | None = None) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.payload_logger = payload_logger or PayloadLogger(LoggerConfig())
        self.version = "unknown"
        self.threshold = 0.5
        self.net: Any = None
        self.vocabularies: list[dict[str, int]] = []

    def load(self) -> bool:
        """Download (if needed) and load the artifact; the model is ready afterwards."""
        with tempfile.TemporaryDirectory(prefix="relearn-model-") as tmp:
            directory, self.version = resolve_artifact(
                self.settings.model_uri, Path(tmp), self.settings.model_version
            )
            self.net, preprocessor, metadata = load_model(directory)
        if preprocessor.numeric != list(NUMERIC_INPUTS) or preprocessor.categorical != list(
            CATEGORICAL_INPUTS
        ):
            raise ValueError("the artifact's inputs do not match this package's feature contract")
        self.vocabularies = [
            {value: i + 1 for i, value in enumerate(vocab)} for vocab in preprocessor.vocabularies.values()
        ]
        self.threshold = float(metadata.get("threshold", 0.5))
        torch.set_num_threads(1)  # batches are small; intra-op threads cost more than they give
        self.ready = True
        log.info("model loaded", extra={"version": self.version, "threshold": self.threshold})
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the inputs."""
        return tensors.INPUT_METADATA

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the outputs."""
        return tensors.OUTPUT_METADATA

    def score_arrays(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Scores (float32) for a numeric ``[N, 17]`` matrix and a ``[N, 5]`` matrix of category strings."""
        codes = np.zeros(categorical.shape, dtype=np.int64)
        for j, vocab in enumerate(self.vocabularies):
            codes[:, j] = [
                vocab.get(v.decode() if isinstance(v, bytes) else str(v), 0) for v in categorical[:, j]
            ]
        logits = predict_logits(self.net, torch.from_numpy(numeric), torch.from_numpy(codes))
        return torch.sigmoid(logits).numpy().astype(np.float32)

    async def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        """Score a v1 dict or a v2 InferRequest (REST or gRPC); log request and response events."""
        labels = {"component": "predictor", "model_version": self.version, "track": track_of(headers)}
        try:
            if isinstance(payload, InferRequest):
                event_id = payload.id or (headers or {}).get("x-request-id") or str(uuid.uuid4())
                numeric, categorical, ids = self._v2_arrays(payload)
            else:
                event_id = (headers or {}).get("x-request-id") or str(uuid.uuid4())
                numeric, categorical, ids = self._v1_arrays(payload)
            route = event_route(headers, self.settings.inference_service)
            self.payload_logger.log_request(
                event_id, _request_body(payload, numeric, categorical, ids, event_id), route
            )
            start = time.perf_counter()
            scores = self.score_arrays(numeric, categorical)
            STAGE_SECONDS.labels(stage="predict", **labels).observe(time.perf_counter() - start)
        except Exception as exc:
            REQUESTS.labels(outcome=outcome_of(exc), **labels).inc()
            raise
        decisions = scores >= self.threshold
        REQUESTS.labels(outcome="ok", **labels).inc()
        ROWS.labels(**labels).inc(len(scores))
        if isinstance(payload, InferRequest):
            response = self._v2_response(payload, event_id, scores, decisions)
        else:
            response = {
                "predictions": [
                    {"score": float(s), "decision": bool(d)} for s, d in zip(scores, decisions, strict=True)
                ],
                "model_version": self.version,
            }
        self.payload_logger.log_response(event_id, _response_body(response, scores, decisions, self), route)
        return response

    def _v2_response(
        self, request: InferRequest, event_id: str, scores: np.ndarray, decisions: np.ndarray
    ) -> InferResponse:
        values = {tensors.SCORE: ("FP32", scores), tensors.DECISION: ("BOOL", decisions)}
        return tensors.v2_response(request, self.name, self.version, event_id, values)

    def _check_batch(self, rows: int) -> None:
        if rows == 0:
            raise InvalidInput("empty batch: at least one row is needed")
        if rows > self.settings.max_batch_size:
            raise InvalidInput(f"batch of {rows} rows exceeds max_batch_size {self.settings.max_batch_size}")

    def _v2_arrays(self, request: InferRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        by_name = {tensor.name: tensor for tensor in request.inputs}
        id_tensor = by_name.pop(tensors.TRANSACTION_ID, None)
        expected = {meta["name"]: meta for meta in tensors.INPUT_METADATA}
        if extra := sorted(set(by_name) - set(expected)):
            raise InvalidInput(
                f"unexpected input(s) {extra}; expected {sorted(expected)} (and {tensors.TRANSACTION_ID!r})"
            )
        if missing := sorted(set(expected) - set(by_name)):
            raise InvalidInput(f"missing input(s) {missing}")
        arrays = {name: _tensor_array(by_name[name], meta) for name, meta in expected.items()}
        ids = None if id_tensor is None else _tensor_array(id_tensor, tensors.ID_METADATA)
        numeric = np.array(arrays[tensors.NUMERIC], dtype=np.float32)  # a copy: raw contents are read-only
        categorical = arrays[tensors.CATEGORICAL]
        if numeric.shape[0] != categorical.shape[0]:
            raise InvalidInput(f"inputs have {numeric.shape[0]} and {categorical.shape[0]} rows")
        if ids is not None and len(ids) != numeric.shape[0]:
            raise InvalidInput(f"input 'transaction_id': {len(ids)} ids for {numeric.shape[0]} rows")
        self._check_batch(numeric.shape[0])
        _check_finite(numeric)
        tensors.requested_outputs(request, OUTPUTS)  # an unknown output is the request's error, early
        return numeric, categorical, ids

    def _v1_arrays(self, payload: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [{...model inputs...}, ...]}')
        instances = payload["instances"]
        self._check_batch(len(instances))
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInput(f"instances[{i}]: expected an object of model inputs")
            if missing := [c for c in MODEL_INPUTS if c not in row]:
                raise InvalidInput(f"instances[{i}]: missing field(s) {missing}")
            if extra := sorted(set(row) - set(MODEL_INPUTS) - {tensors.TRANSACTION_ID}):
                raise InvalidInput(f"instances[{i}]: unexpected field(s) {extra}")
        frame = pd.DataFrame(instances, columns=list(MODEL_INPUTS))
        try:
            numeric = frame[list(NUMERIC_INPUTS)].astype(np.float32).to_numpy()
        except (TypeError, ValueError):
            bad = next(c for c in NUMERIC_INPUTS if pd.to_numeric(frame[c], errors="coerce").isna().any())
            raise InvalidInput(f"field '{bad}': expected numbers") from None
        _check_finite(numeric)
        categorical = frame[list(CATEGORICAL_INPUTS)].astype(str).to_numpy(dtype=object)
        return numeric, categorical, None  # a v1 request is logged as sent, transaction ids included


def _tensor_array(tensor: Any, meta: dict[str, Any]) -> np.ndarray:
    """The contents of a v2 input as an array, checked against its metadata (``-1``: any size)."""
    name, expected = meta["name"], meta["shape"]
    if tensor.datatype != meta["datatype"]:
        raise InvalidInput(f"input '{name}': datatype {tensor.datatype}, expected {meta['datatype']}")
    shape = list(tensor.shape)
    if len(shape) != len(expected) or any(e not in (-1, d) for d, e in zip(shape, expected, strict=True)):
        wanted = ", ".join("N" if e == -1 else str(e) for e in expected)
        raise InvalidInput(f"input '{name}': shape {shape}, expected [{wanted}]")
    try:
        array = tensor.as_numpy()
    except Exception as exc:
        raise InvalidInput(f"input '{name}': contents do not match shape {shape}: {exc}") from None
    if list(array.shape) != shape:
        raise InvalidInput(f"input '{name}': {array.size} values do not fill shape {shape}")
    if meta["datatype"] == "BYTES":  # text from here on: the vocabularies and the payload log take str
        try:
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
        array = np.array(text, dtype=object).reshape(array.shape)
    return array


def _check_finite(numeric: np.ndarray) -> None:
    bad = ~np.isfinite(numeric)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise InvalidInput(f"input 'numeric' field '{NUMERIC_INPUTS[col]}' (row {row}) is NaN or infinite")


def _request_body(
    payload: Any, numeric: np.ndarray, categorical: np.ndarray, ids: np.ndarray | None, event_id: str
) -> Any:
    if not isinstance(payload, InferRequest):
        return payload
    inputs = [
        (tensors.NUMERIC, "FP32", list(numeric.shape), numeric),
        (tensors.CATEGORICAL, "BYTES", list(categorical.shape), categorical),
    ]
    if ids is not None:
        inputs.append((tensors.TRANSACTION_ID, "BYTES", [len(ids)], ids))
    return lambda: tensors.v2_json(inputs, event_id, arrays=True)


def _response_body(response: Any, scores: np.ndarray, decisions: np.ndarray, model: FraudPredictor) -> Any:
    if not isinstance(response, InferResponse):
        return response
    return lambda: tensors.v2_json(
        [
            (tensors.SCORE, "FP32", list(scores.shape), scores),
            (tensors.DECISION, "BOOL", list(decisions.shape), decisions),
        ],
        response.id,
        arrays=True,
        model_name=model.name,
        model_version=model.version,
        key="outputs",
    )


__all__ = ["FraudPredictor", "resolve_artifact"]
