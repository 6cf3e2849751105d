"""The transformer: raw transactions in, streaming entity features, model inputs, predictor over v2 gRPC.

Requests: v1 ``{"instances": [{<REQUEST_FIELDS>}, ...]}`` or v2 with one input per request field, shape
``[N]`` (``amount`` FP64 or FP32, the others BYTES; ``event_timestamp`` an ISO-8601 string). Per batch: one
:meth:`~relearn.features.state.OnlineState.observe_async` call — each transaction is added to its card's
and merchant's state (once per ``transaction_id``) and gets the features just before it — bounded by
``feature_timeout_seconds``; a transaction beyond the lateness bound or from the future is a 400 /
INVALID_ARGUMENT naming ``event_timestamp``, and the state is unchanged. Then
:func:`relearn.features.transforms.model_input_arrays` — the formulas of ``model_inputs``, which built the
training set — then one ``ModelInfer`` call to the predictor with raw tensor contents (bounded by
``predictor_timeout_seconds``), under the request's id and with each row's ``transaction_id``, which the
predictor's payload log carries to the drift detector (the transformer logs nothing itself).
Responses: v1 ``{"predictions": [{"transaction_id", "score", "decision"}], "model_version"}``; v2 outputs
``transaction_id`` BYTES, ``score`` FP32, ``decision`` BOOL, all ``[N]``, and ``model_version``.
A state or predictor failure (or timeout) is a 503 / UNAVAILABLE, never a hang; with ``feature_fallback``
the batch is scored with cold-start defaults instead, counted in a metric.

Every record is held to the data contract the pipeline validates (:mod:`relearn.data.contract`): a violation
is a 400 / INVALID_ARGUMENT in the pipeline's words with the row, ``row 0: field 'amount' must be ...``.
The per-request path has no DataFrame: a request is parsed straight into columns, the state is called from
the event loop, and metric children are looked up once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import grpc
import numpy as np
from kserve import InferRequest, InferResponse, Model
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from relearn.data import contract
from relearn.data.schema import REQUEST_FIELDS
from relearn.errors import outcome_of
from relearn.features.spec import MERCHANT_FEATURES, USER_FEATURES
from relearn.features.state import Event, Rejected, open_state
from relearn.features.transforms import cold_start, model_input_arrays
from relearn.routing import ARM_HEADER, EXPERIMENT_HEADER, ArmAssigner, load_assigner
from relearn.serving import tensors
from relearn.serving.config import TransformerSettings
from relearn.serving.errors import InvalidInput, Unavailable
from relearn.serving.metrics import (
    COLD_START,
    FEATURE_FALLBACK,
    REJECTED_EVENTS,
    REQUESTS,
    ROWS,
    STAGE_SECONDS,
    child,
    track_of,
)

log = logging.getLogger(__name__)

NUMERIC_FIELDS = ("amount",)
TEXT_FIELDS = tuple(f for f in REQUEST_FIELDS if f not in NUMERIC_FIELDS)
_TEXT_FEATURES = ("user_last_country", "user_last_device")
_NUMBER_FEATURES = tuple(f for f in (*USER_FEATURES, *MERCHANT_FEATURES) if f not in _TEXT_FEATURES)


class FraudTransformer(Model):
    """Feature enrichment in front of the predictor; decision at the configured (or registered) threshold.

    Args:
        settings: The transformer's settings.
        experiment: The A/B experiment's arm assigner; default: built at load by ``settings.arm_assigner``.
    """

    def __init__(self, settings: TransformerSettings, experiment: ArmAssigner | None = None) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.state: Any = None
        self.stubs: dict[str, Any] = {}  # by host, created lazily: a channel needs the server's event loop
        self.version = "unknown"  # the predictor's, learnt from its responses
        self.experiment = experiment

    def load(self) -> bool:
        """Open the streaming state and warm its connection up (a read changes nothing)."""
        self.state = open_state()
        self.state.read([Event("", 0, "", "")])
        if self.experiment is None:
            self.experiment = load_assigner(self.settings.arm_assigner)
        self.ready = True
        return self.ready

    def _stub(self, arm_marked: bool) -> Any:
        """The predictor's stub; for arm-marked calls ``experiment_host``'s, when it is set.

        In the cluster the experiment router (an Istio VirtualService on x-relearn-arm); locally the
        predictor host is the local router, which routes by the same header.
        """
        host = (arm_marked and self.settings.experiment_host) or self.settings.predictor_host
        if host not in self.stubs:
            from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

            channel = grpc.aio.insecure_channel(host)
            self.stubs[host] = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        return self.stubs[host]

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
        version, track = self.version, track_of(headers)
        try:
            is_v2 = isinstance(payload, InferRequest)
            event_id = (
                (payload.id if is_v2 else None) or (headers or {}).get("x-request-id") or str(uuid.uuid4())
            )
            events, columns = self._v2_columns(payload) if is_v2 else self._v1_columns(payload)
            fetch_seconds = await self._features(events, columns)
            start = time.perf_counter()
            numeric, categorical = model_input_arrays(columns, len(events))
            cold = int(cold_start(columns, len(events)).sum())
            transform_seconds = time.perf_counter() - start
            ids = columns["transaction_id"]
            scores, decisions, version, rows_of = await self._score_arms(
                columns["user_id"], numeric, categorical, ids, event_id, track
            )
        except Exception as exc:
            child(REQUESTS, "transformer", outcome_of(exc), version, track).inc()
            raise
        if len(rows_of) == 1:  # a batch split over arms keeps the last single version for error labels
            self.version = version
        child(STAGE_SECONDS, "transformer", "transform", version, track).observe(transform_seconds)
        child(STAGE_SECONDS, "transformer", "feature_fetch", version, track).observe(fetch_seconds)
        if cold:
            child(COLD_START, version).inc(cold)
        for arm_version, rows in rows_of.items():  # per arm's version: a mixed batch counts in each
            child(REQUESTS, "transformer", "ok", arm_version, track).inc()
            child(ROWS, "transformer", arm_version, track).inc(rows)
        if is_v2:
            values = {
                tensors.TRANSACTION_ID: ("BYTES", ids),
                tensors.SCORE: ("FP32", scores),
                tensors.DECISION: ("BOOL", decisions),
            }
            return tensors.v2_response(payload, self.name, version, event_id, values)
        return {
            "predictions": [
                {"transaction_id": t, "score": float(s), "decision": bool(d)}
                for t, s, d in zip(ids.tolist(), scores.tolist(), decisions.tolist(), strict=True)
            ],
            "model_version": version,
        }

    async def _features(self, events: list[Event], columns: dict[str, Any]) -> float:
        """Add the batch to the streaming state and read its features into ``columns``, within the timeout.

        Returns:
            The seconds the update and read took.
        """
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.feature_timeout_seconds):
                rows = await self.state.observe_async(events)
        except Rejected as exc:
            child(REJECTED_EVENTS, exc.reason).inc(len(events))
            raise InvalidInput(str(exc)) from None
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {type(exc).__name__}: {exc}"
            log.warning("streaming state unavailable", extra={"reason": reason})
            if self.settings.feature_fallback:
                child(FEATURE_FALLBACK, self.version).inc(len(events))
                return time.perf_counter() - start  # no entity features: cold-start defaults
            raise Unavailable(f"feature state unavailable: update and read {reason}") from None
        for name in _NUMBER_FEATURES:
            columns[name] = np.array([row[name] for row in rows], dtype=np.float64)  # None: NaN
        for name in _TEXT_FEATURES:
            columns[name] = np.array([row[name] or "" for row in rows], dtype=object)
        return time.perf_counter() - start

    async def _score_arms(
        self,
        users: np.ndarray,
        numeric: np.ndarray,
        categorical: np.ndarray,
        ids: np.ndarray,
        event_id: str,
        track: str,
    ) -> tuple[np.ndarray, np.ndarray, str, dict[str, int]]:
        """Score a batch; in a running experiment, each arm's rows in their own call marked with the arm.

        The router sends a marked call to the arm's version; the version returned is each arm's, joined,
        with the rows each version scored (the per-arm metrics of a batch mixing arms).
        """
        assigned = self.experiment.arms(users) if self.experiment else None
        if assigned is None:
            scores, decisions, version = await self._score(numeric, categorical, ids, event_id, track)
            return scores, decisions, version, {version: len(ids)}
        name, arms = assigned
        groups = list(dict.fromkeys(arms.tolist()))  # first seen first
        masks = [arms == arm for arm in groups]
        done = await asyncio.gather(
            *(
                self._score(
                    numeric[rows],
                    categorical[rows],
                    ids[rows],
                    event_id if len(groups) == 1 else f"{event_id}-{arm}",  # one ce-id per inference
                    track,
                    ((ARM_HEADER, arm), (EXPERIMENT_HEADER, name)),
                )
                for arm, rows in zip(groups, masks, strict=True)
            )
        )
        scores, decisions = np.empty(len(ids), np.float32), np.empty(len(ids), np.bool_)
        rows_of: dict[str, int] = {}
        for rows, (s, d, v) in zip(masks, done, strict=True):
            scores[rows], decisions[rows] = s, d
            rows_of[v] = rows_of.get(v, 0) + int(rows.sum())
        return scores, decisions, ",".join(rows_of), rows_of

    async def _score(
        self,
        numeric: np.ndarray,
        categorical: np.ndarray,
        ids: np.ndarray,
        event_id: str,
        track: str,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[np.ndarray, np.ndarray, str]:
        n = len(ids)
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
            response = await self._stub(bool(metadata)).ModelInfer(
                request, timeout=self.settings.predictor_timeout_seconds, metadata=metadata or None
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput(f"predictor rejected the inputs: {exc.details()}") from None
            raise Unavailable(f"predictor unavailable: {exc.code().name}: {exc.details()}") from None
        version = response.model_version or self.version
        elapsed = time.perf_counter() - start
        child(STAGE_SECONDS, "transformer", "predict", version, track).observe(elapsed)
        names = [o.name for o in response.outputs]
        scores = np.frombuffer(response.raw_output_contents[names.index(tensors.SCORE)], dtype=np.float32)
        if self.settings.threshold is not None:
            decisions = scores >= self.settings.threshold
        else:
            raw = response.raw_output_contents[names.index(tensors.DECISION)]
            decisions = np.frombuffer(raw, dtype=np.bool_)
        return scores, decisions, version

    def _check(self, fields: dict[str, list], n: int) -> tuple[list[Event], dict[str, Any]]:
        """Validate the request's fields (one list per field); the state's events and the model's columns."""
        if n == 0:
            raise InvalidInput("empty batch: at least one transaction is needed")
        if n > self.settings.max_batch_size:
            raise InvalidInput(f"batch of {n} rows exceeds max_batch_size {self.settings.max_batch_size}")
        try:  # the data contract the pipeline validates, the same words for the same fault
            parsed = contract.check_columns(fields, n)
        except contract.Violation as exc:
            raise InvalidInput(str(exc)) from None
        times, amounts = parsed["event_timestamp"], parsed["amount"]
        text = {name: parsed[name] for name in TEXT_FIELDS}
        ids, users, merchants = text["transaction_id"], text["user_id"], text["merchant_id"]
        countries, devices = text["country"], text["device_id"]
        events = [
            Event(*values)
            for values in zip(ids, times, users, merchants, amounts, countries, devices, strict=True)
        ]
        columns: dict[str, Any] = {name: np.array(values, dtype=object) for name, values in text.items()}
        columns["event_time_us"] = np.array(times, dtype=np.int64)
        columns["amount"] = np.array(amounts, dtype=np.float64)
        return events, columns

    def _v1_columns(self, payload: Any) -> tuple[list[Event], dict[str, Any]]:
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
            if extra := sorted(set(row) - _REQUEST_SET):
                raise InvalidInput(f"instances[{i}]: unexpected field(s) {extra}")
        return self._check({name: [row.get(name) for row in rows] for name in REQUEST_FIELDS}, len(rows))

    def _v2_columns(self, request: InferRequest) -> tuple[list[Event], dict[str, Any]]:
        by_name = {tensor.name: tensor for tensor in request.inputs}
        if extra := sorted(set(by_name) - _REQUEST_SET):
            raise InvalidInput(f"unexpected input(s) {extra}")
        if missing := [f for f in contract.required() if f not in by_name]:
            raise InvalidInput(f"missing input(s) {missing}")
        fields: dict[str, list] = {}
        rows = None
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
                fields[name] = values.astype(np.float64).tolist()
            else:
                try:
                    fields[name] = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
                except UnicodeDecodeError:
                    raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
        for name in REQUEST_FIELDS:
            fields.setdefault(name, [None] * (rows or 0))
        tensors.requested_outputs(request, OUTPUT_NAMES)  # an unknown output: refused before the state moves
        return self._check(fields, rows or 0)


_REQUEST_SET = frozenset(REQUEST_FIELDS)
OUTPUT_NAMES = [tensors.TRANSACTION_ID, tensors.SCORE, tensors.DECISION]
