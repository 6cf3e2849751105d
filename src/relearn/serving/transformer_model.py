"""The transformer: raw transactions in, streaming entity features, model inputs, predictor over v2 gRPC.

Requests: v1 ``{"instances": [{<REQUEST_FIELDS>}, ...]}`` or v2 with one input per request field, shape
``[N]`` (``amount`` FP64 or FP32, the others BYTES; ``event_timestamp`` an ISO-8601 string). Per batch: one
:meth:`~relearn.features.state.OnlineState.observe` call — each transaction is added to its card's and
merchant's state (once per ``transaction_id``) and gets the features just before it — bounded by
``feature_timeout_seconds``; a transaction beyond the lateness bound or from the future is a 400 /
INVALID_ARGUMENT naming ``event_timestamp``, and the state is unchanged. Then
:func:`relearn.features.transforms.model_inputs` — the same code that built the training set — then one
``ModelInfer`` call to the predictor with raw tensor contents (bounded by ``predictor_timeout_seconds``),
under the request's id and with each row's ``transaction_id``, which the predictor's payload log carries
to the drift detector (the transformer logs nothing itself).
Responses: v1 ``{"predictions": [{"transaction_id", "score", "decision"}], "model_version"}``; v2 outputs
``transaction_id`` BYTES, ``score`` FP32, ``decision`` BOOL, all ``[N]``, and ``model_version``.
A state or predictor failure (or timeout) is a 503 / UNAVAILABLE, never a hang; with ``feature_fallback``
the batch is scored with cold-start defaults instead, counted in a metric.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput, ServerNotReady

from relearn.data.schema import REQUEST_FIELDS
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from relearn.features.transforms import cold_start_mask, epoch_us, model_inputs
from relearn.serving import tensors
from relearn.serving.config import TransformerSettings
from relearn.serving.metrics import (
    COLD_START,
    FEATURE_FALLBACK,
    REJECTED_EVENTS,
    REQUESTS,
    ROWS,
    STAGE_SECONDS,
    track_of,
)

log = logging.getLogger(__name__)


def unavailable(detail: str) -> ServerNotReady:
    """A ServerNotReady (503 / UNAVAILABLE) that KServe's gRPC interceptor can report.

    KServe 0.21's interceptor reads ``ex.reason``, which ServerNotReady lacks; without it a gRPC client gets
    UNKNOWN (AttributeError) instead of UNAVAILABLE.
    """
    error = ServerNotReady(detail)
    error.reason = str(error)
    return error


NUMERIC_FIELDS = ("amount",)
TEXT_FIELDS = tuple(f for f in REQUEST_FIELDS if f not in NUMERIC_FIELDS)
REQUIRED_FIELDS = ("transaction_id", "event_timestamp", "user_id", "merchant_id", "amount")


def _field(value: Any) -> str:
    """An optional text field as stored ("" for missing)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


class FraudTransformer(Model):
    """Feature enrichment in front of the predictor; decision at the configured (or registered) threshold."""

    def __init__(self, settings: TransformerSettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.state: Any = None
        self.channel: Any = None
        self.stub: Any = None
        self.version = "unknown"  # the predictor's, learnt from its responses

    def load(self) -> bool:
        """Open the streaming state and warm its connection up (a read changes nothing)."""
        from relearn.features.state import Event, open_state

        self.state = open_state()
        self.state.read([Event("", 0, "", "")])
        self.ready = True
        return self.ready

    def _stub(self) -> Any:
        if self.stub is None:  # created lazily: needs the server's event loop
            from grpc import aio
            from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

            self.channel = aio.insecure_channel(self.settings.predictor_host)
            self.stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        return self.stub

    def get_input_types(self) -> list[dict[str, Any]]:
        """One v2 input per request field."""
        return [
            {"name": f, "datatype": "FP64" if f in NUMERIC_FIELDS else "BYTES", "shape": [-1]}
            for f in REQUEST_FIELDS
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """transaction_id, score and decision per row."""
        return [
            {"name": "transaction_id", "datatype": "BYTES", "shape": [-1]},
            {"name": tensors.SCORE, "datatype": "FP32", "shape": [-1]},
            {"name": tensors.DECISION, "datatype": "BOOL", "shape": [-1]},
        ]

    async def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        """Validate, enrich, score through the predictor (which logs the inference), decide."""
        version, tags = self.version, {"component": "transformer", "track": track_of(headers)}
        try:
            is_v2 = isinstance(payload, InferRequest)
            event_id = (
                (payload.id if is_v2 else None) or (headers or {}).get("x-request-id") or str(uuid.uuid4())
            )
            frame = self._v2_frame(payload) if is_v2 else self._v1_frame(payload)
            features, fetch_seconds = await self._features(frame)
            start = time.perf_counter()
            inputs = model_inputs(features)
            cold = int(cold_start_mask(features).sum())
            transform_seconds = time.perf_counter() - start
            ids = frame["transaction_id"].to_numpy(dtype=object)
            scores, decisions, version = await self._score(inputs, ids, event_id, tags["track"])
        except InvalidInput:
            REQUESTS.labels(outcome="invalid", model_version=version, **tags).inc()
            raise
        except ServerNotReady:
            REQUESTS.labels(outcome="unavailable", model_version=version, **tags).inc()
            raise
        except Exception:
            REQUESTS.labels(outcome="error", model_version=version, **tags).inc()
            raise
        self.version = version
        STAGE_SECONDS.labels(stage="transform", model_version=version, **tags).observe(transform_seconds)
        STAGE_SECONDS.labels(stage="feature_fetch", model_version=version, **tags).observe(fetch_seconds)
        if cold:
            COLD_START.labels(model_version=version).inc(cold)
        REQUESTS.labels(outcome="ok", model_version=version, **tags).inc()
        ROWS.labels(model_version=version, **tags).inc(len(scores))
        if is_v2:
            return self._v2_response(payload, event_id, ids, scores, decisions, version)
        return {
            "predictions": [
                {"transaction_id": str(t), "score": float(s), "decision": bool(d)}
                for t, s, d in zip(ids, scores, decisions, strict=True)
            ],
            "model_version": version,
        }

    async def _features(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        """Add the batch to the streaming state and read its features, bounded by the timeout.

        Returns:
            The requests joined with their entity features, and the seconds the update and read took.
        """
        from relearn.features.state import Event, Rejected

        events = [
            Event(str(tid), int(t), str(user), str(merchant), float(amount), _field(country), _field(device))
            for tid, t, user, merchant, amount, country, device in zip(
                frame["transaction_id"],
                epoch_us(frame["event_timestamp"]).tolist(),
                frame["user_id"],
                frame["merchant_id"],
                frame["amount"],
                frame["country"],
                frame["device_id"],
                strict=True,
            )
        ]
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            features = await asyncio.wait_for(
                loop.run_in_executor(None, self.state.observe, events),
                timeout=self.settings.feature_timeout_seconds,
            )
            return frame.assign(**pd.DataFrame(features, index=frame.index)), time.perf_counter() - start
        except Rejected as exc:
            REJECTED_EVENTS.labels(reason=exc.reason).inc(len(events))
            raise InvalidInput(str(exc)) from None
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {type(exc).__name__}: {exc}"
            log.warning("streaming state unavailable", extra={"reason": reason})
            if self.settings.feature_fallback:
                FEATURE_FALLBACK.labels(model_version=self.version).inc(len(frame))
                return frame, time.perf_counter() - start  # no entity features: cold-start defaults
            raise unavailable(f"feature state unavailable: update and read {reason}") from None

    async def _score(
        self, inputs: pd.DataFrame, ids: np.ndarray, event_id: str, track: str = "primary"
    ) -> tuple[np.ndarray, np.ndarray, str]:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        numeric = inputs[list(NUMERIC_INPUTS)].to_numpy(np.float32)
        categorical = inputs[list(CATEGORICAL_INPUTS)].to_numpy(dtype=object)
        n = len(inputs)
        request = pb.ModelInferRequest(
            model_name=self.settings.model_name,
            id=event_id,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=tensors.NUMERIC, datatype="FP32", shape=[n, tensors.N_NUMERIC]
                ),
                pb.ModelInferRequest.InferInputTensor(
                    name=tensors.CATEGORICAL, datatype="BYTES", shape=[n, tensors.N_CATEGORICAL]
                ),
                pb.ModelInferRequest.InferInputTensor(
                    name=tensors.TRANSACTION_ID, datatype="BYTES", shape=[n]
                ),
            ],
            raw_input_contents=[
                numeric.tobytes(),
                tensors.serialize_bytes(categorical),
                tensors.serialize_bytes(ids),
            ],
        )
        start = time.perf_counter()
        try:
            response = await self._stub().ModelInfer(request, timeout=self.settings.predictor_timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput(f"predictor rejected the inputs: {exc.details()}") from None
            raise unavailable(f"predictor unavailable: {exc.code().name}: {exc.details()}") from None
        version = response.model_version or self.version
        STAGE_SECONDS.labels(
            component="transformer", stage="predict", model_version=version, track=track
        ).observe(time.perf_counter() - start)
        names = [o.name for o in response.outputs]
        scores = np.frombuffer(response.raw_output_contents[names.index(tensors.SCORE)], dtype=np.float32)
        if self.settings.threshold is not None:
            decisions = scores >= self.settings.threshold
        else:
            raw = response.raw_output_contents[names.index(tensors.DECISION)]
            decisions = np.frombuffer(raw, dtype=np.bool_)
        return scores, decisions, version

    def _v2_response(
        self,
        request: InferRequest,
        event_id: str,
        ids: np.ndarray,
        scores: np.ndarray,
        decisions: np.ndarray,
        version: str,
    ) -> InferResponse:
        binary = request.use_binary_outputs
        outputs = []
        for name, datatype, values in (
            ("transaction_id", "BYTES", ids),
            (tensors.SCORE, "FP32", scores),
            (tensors.DECISION, "BOOL", decisions),
        ):
            output = InferOutput(name=name, shape=[len(values)], datatype=datatype)
            output.set_data_from_numpy(values, binary_data=binary)
            outputs.append(output)
        return InferResponse(
            response_id=event_id,
            model_name=self.name,
            model_version=version,
            infer_outputs=outputs,
            from_grpc=request.from_grpc,
            use_binary_outputs=binary,
        )

    def _check(self, frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) == 0:
            raise InvalidInput("empty batch: at least one transaction is needed")
        if len(frame) > self.settings.max_batch_size:
            raise InvalidInput(
                f"batch of {len(frame)} rows exceeds max_batch_size {self.settings.max_batch_size}"
            )
        for name in REQUIRED_FIELDS:
            if frame[name].isna().any():
                raise InvalidInput(f"field '{name}' is null")
        amount = pd.to_numeric(frame["amount"], errors="coerce")
        if amount.isna().any() or not np.isfinite(amount.to_numpy(np.float64)).all():
            raise InvalidInput("field 'amount' must be a finite number")
        stamps = pd.to_datetime(frame["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
        if stamps.isna().any():
            raise InvalidInput("field 'event_timestamp' must be an ISO-8601 timestamp")
        frame["amount"] = amount.astype(np.float64)
        frame["event_timestamp"] = stamps
        return frame

    def _v1_frame(self, payload: Any) -> pd.DataFrame:
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [{...transaction fields...}, ...]}')
        if extra_keys := sorted(set(payload) - {"instances", "parameters", "id"}):
            raise InvalidInput(f"unexpected top-level field(s) {extra_keys}")
        rows = payload["instances"]
        if len(rows) > self.settings.max_batch_size:
            raise InvalidInput(
                f"batch of {len(rows)} rows exceeds max_batch_size {self.settings.max_batch_size}"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidInput(f"instances[{i}]: expected an object of transaction fields")
            if missing := [f for f in REQUIRED_FIELDS if f not in row]:
                raise InvalidInput(f"instances[{i}]: missing field(s) {missing}")
            if extra := sorted(set(row) - set(REQUEST_FIELDS)):
                raise InvalidInput(f"instances[{i}]: unexpected field(s) {extra}")
            amount = row["amount"]
            if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
                raise InvalidInput(f"instances[{i}]: field 'amount' must be a finite number")
        return self._check(pd.DataFrame(rows, columns=list(REQUEST_FIELDS)))

    def _v2_frame(self, request: InferRequest) -> pd.DataFrame:
        by_name = {tensor.name: tensor for tensor in request.inputs}
        if extra := sorted(set(by_name) - set(REQUEST_FIELDS)):
            raise InvalidInput(f"unexpected input(s) {extra}")
        if missing := [f for f in REQUIRED_FIELDS if f not in by_name]:
            raise InvalidInput(f"missing input(s) {missing}")
        columns, rows = {}, None
        for name, tensor in by_name.items():
            allowed = ("FP64", "FP32") if name in NUMERIC_FIELDS else ("BYTES",)
            if tensor.datatype not in allowed:
                raise InvalidInput(
                    f"input '{name}': datatype {tensor.datatype}, expected {' or '.join(allowed)}"
                )
            if len(tensor.shape) != 1:
                raise InvalidInput(f"input '{name}': shape {list(tensor.shape)}, expected [N]")
            try:
                values = tensor.as_numpy()
            except Exception as exc:
                raise InvalidInput(f"input '{name}': contents do not match its shape: {exc}") from None
            if values.shape != (tensor.shape[0],):
                raise InvalidInput(f"input '{name}': {values.size} values for shape {list(tensor.shape)}")
            if rows is not None and len(values) != rows:
                raise InvalidInput(f"input '{name}': {len(values)} rows, other inputs have {rows}")
            rows = len(values)
            if name in NUMERIC_FIELDS:
                columns[name] = values.astype(np.float64)
            else:
                columns[name] = [v.decode() if isinstance(v, bytes) else v for v in values]
        frame = pd.DataFrame(columns)
        for name in REQUEST_FIELDS:
            if name not in frame:
                frame[name] = None
        return self._check(frame[list(REQUEST_FIELDS)])
