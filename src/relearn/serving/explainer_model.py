"""The explainer: why the registered model scores a transaction as it does, on KServe's v1 ``:explain``.

Request, ``POST /v1/models/<m>:explain`` (JSON; at most ``max_batch_size`` rows):

- raw transactions, as the transformer's v1 ``:predict`` takes them: ``{"instances": [{"transaction_id",
  "event_timestamp", "user_id", "merchant_id", "amount", ...}, ...]}``. The entity features are read from
  the streaming state as of each transaction's time, without adding it (explaining changes nothing);
- or model inputs, as the predictor's v1 ``:predict`` takes them (an instance holding ``log_amount``):
  ``{"instances": [{<MODEL_INPUTS>, "transaction_id"?}, ...]}``.

Optional ``"parameters": {"top": k}``: list only the k inputs with the largest attributions.

Response::

    {"model_version": "3", "method": "integrated_gradients", "target": "logit", "threshold": 0.41,
     "explanations": [{"transaction_id": "t1", "score": 0.93, "decision": true, "logit": 2.6,
                       "base_score": 0.02, "base_logit": -3.9, "convergence_delta": 0.001,
                       "attributions": [{"input": "log_amount", "term": "amount", "value": 950.0,
                                         "attribution": 3.1}, ...]}]}

``attributions`` are in logit units, largest magnitude first; they sum to ``logit - base_logit`` (up to
``convergence_delta``), where the base is the average transaction (:mod:`relearn.model.explain`). ``value``
is in the request's terms (the amount rather than its log, a flag as a boolean, a category as sent).
Bad input is a 400 ``{"error": ...}`` naming the field, with the predictor's and transformer's words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
from kserve import InferRequest

from relearn.errors import outcome_of
from relearn.features.spec import MERCHANT_FEATURES, USER_FEATURES
from relearn.features.state import open_state
from relearn.features.transforms import model_input_arrays
from relearn.model.explain import explain_rows
from relearn.serving.config import TransformerSettings
from relearn.serving.errors import InvalidInput, Unavailable
from relearn.serving.metrics import REQUESTS, ROWS, STAGE_SECONDS, child, track_of
from relearn.serving.predictor_model import FraudPredictor
from relearn.serving.transformer_model import FraudTransformer

log = logging.getLogger(__name__)
METHOD = "integrated_gradients"
_TEXT_FEATURES = frozenset({"user_last_country", "user_last_device"})


class FraudExplainer(FraudPredictor):
    """The predictor's model and input checks, with :meth:`explain` instead of scores."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        # The transformer's parser of raw transactions: the data contract's checks in the same words.
        self.parser = FraudTransformer(
            TransformerSettings(model_name=settings.model_name, max_batch_size=settings.max_batch_size)
        )
        self.state: Any = None

    def load(self) -> bool:
        """Load the registered model (as the predictor) and open the streaming state (read only)."""
        super().load()
        self.state = open_state()
        return self.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """Scores are the predictor's: this server answers ``:explain`` only."""
        raise InvalidInput("this is the explainer: POST /v1/models/<model>:explain (scores: the predictor)")

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Attributions of each row's score to the model inputs, in the request's terms.

        Integrated Gradients takes a few ms of CPU per row: in a worker thread (torch releases the GIL),
        so the event loop keeps answering health probes and metrics meanwhile.
        """
        return await asyncio.to_thread(self._explain, payload, headers)

    def _explain(self, payload: Any, headers: dict[str, str] | None) -> dict[str, Any]:
        labels = ("explainer", self.version, track_of(headers))
        start = time.perf_counter()
        try:
            payload = _body(payload)
            numeric, categorical, ids = self._inputs(payload)
            top = _top(payload, self.settings.top)
            found = explain_rows(self.net, numeric, self._codes(categorical), categorical, top)
        except Exception as exc:
            child(REQUESTS, labels[0], outcome_of(exc), *labels[1:]).inc()
            raise
        child(STAGE_SECONDS, labels[0], "explain", *labels[1:]).observe(time.perf_counter() - start)
        child(REQUESTS, labels[0], "ok", *labels[1:]).inc()
        child(ROWS, *labels).inc(len(ids))
        rows = [
            {"transaction_id": tid, "decision": row["score"] >= self.threshold, **row}
            for tid, row in zip(ids, found["rows"], strict=True)
        ]
        return {
            "model_version": self.version,
            "method": METHOD,
            "target": "logit",
            "threshold": self.threshold,
            "explanations": rows,
        }

    def _inputs(self, payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """``(numeric, categorical strings, transaction ids)`` of a request of either kind."""
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("field 'instances': expected a non-empty list of objects")
        if isinstance(instances[0], dict) and "log_amount" in instances[0]:  # model inputs
            numeric, categorical, _ = self._v1_arrays(payload)
            return numeric, categorical, [row.get("transaction_id") for row in instances]
        events, columns = self.parser._v1_columns(payload)
        try:
            rows = self.state.read(events)
        except Exception as exc:
            log.warning("streaming state unavailable", extra={"reason": f"{type(exc).__name__}: {exc}"})
            raise Unavailable(f"feature state unavailable: read failed: {type(exc).__name__}") from None
        for name in (*USER_FEATURES, *MERCHANT_FEATURES):
            if name in _TEXT_FEATURES:
                columns[name] = np.array([row[name] or "" for row in rows], dtype=object)
            else:
                columns[name] = np.array([row[name] for row in rows], dtype=np.float64)  # None: NaN
        numeric, categorical = model_input_arrays(columns, len(events))
        return numeric, categorical, columns["transaction_id"].tolist()

    def _codes(self, categorical: np.ndarray) -> np.ndarray:
        """Vocabulary indices of the category strings (0: unknown), as the predictor scores them."""
        codes = np.zeros(categorical.shape, dtype=np.int64)
        for j, vocab in enumerate(self.vocabularies):
            codes[:, j] = [vocab.get(str(v), 0) for v in categorical[:, j]]
        return codes


def _body(payload: Any) -> dict[str, Any]:
    """The request as a dict; a form-typed body (``curl -d``), which KServe passes as bytes, parsed."""
    if isinstance(payload, bytes | bytearray):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidInput(f"body: not valid JSON: {exc}") from None
    if isinstance(payload, InferRequest) or not isinstance(payload, dict):
        raise InvalidInput('expected a JSON body {"instances": [{...}, ...]} (v1 :explain)')
    return payload


def _top(payload: dict[str, Any], default: int | None) -> int | None:
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("field 'parameters': expected an object")
    top = parameters.get("top", default)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise InvalidInput("field 'parameters.top': expected a positive integer")
    return top


__all__ = ["METHOD", "FraudExplainer"]
