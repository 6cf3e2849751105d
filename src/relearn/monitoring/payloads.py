"""Parse KServe payload-logger CloudEvents (binary or structured mode) and their v1/v2 JSON bodies.

Which component's events: attach the logger to the **predictor**. Its request carries the model inputs
(after the transformer's Feast lookup), which the drift tests need; its response carries the scores. The
transaction id travels as an extra ``transaction_id`` field (v1 instance key or v2 BYTES input), so labels
join. Raw-transaction bodies (the transformer's request: ``amount``, ``merchant_category``, ...) are
accepted too; from them only the request-only inputs (categoricals and ``log_amount``) are tested.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from relearn.errors import InvalidRequest
from relearn.events import EVENT_TYPES, REQUEST_TYPE, RESPONSE_TYPE
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.routing import TRACKS as TRACKS  # the roles of logged predictions (re-exported)

RAW_FIELDS = ("amount", "merchant_category", "channel", "country", "currency")
ID_FIELD = "transaction_id"
_NUMERIC = frozenset(NUMERIC_INPUTS)
_CATEGORICAL = frozenset(CATEGORICAL_INPUTS)
# [batch, k] v2 tensors whose columns are inputs: the predictor's ``numeric`` / ``categorical`` pair
# (relearn.serving.tensors), or one tensor of all MODEL_INPUTS under any other name.
_BLOCKS = {"numeric": NUMERIC_INPUTS, "categorical": CATEGORICAL_INPUTS}
_REQUIRED = ("ce-id", "ce-type", "ce-source", "ce-specversion")
STRUCTURED = "application/cloudevents+json"  # structured content mode, JSON event format
BATCH = "application/cloudevents-batch+json"  # batched content mode


class Rejected(InvalidRequest, ValueError):
    """An event the sink refuses (4xx); ``reason`` (its ``code``) labels the rejected counter."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(detail, code=reason, status=status)
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One accepted payload-logger event."""

    ce_id: str
    type: str
    track: str
    time: str
    body: bytes


def parse_headers(headers: Any, shadow_service: str | None) -> tuple[str, str, str, str]:
    """Check the binary-mode CloudEvent attributes.

    Args:
        headers: Case-insensitive mapping of the HTTP headers.
        shadow_service: ``ce-inferenceservicename`` of the shadow InferenceService, if any.

    Returns:
        ``(ce_id, type, track, time)``; ``track`` is ``stable``, ``canary`` or ``shadow``, from the
        headers alone (stored with the event). The monitor decides a pair's track by its response's
        model version when it knows the stable one (see :mod:`relearn.monitoring.monitor`).

    Raises:
        Rejected: Missing attributes, a spec version other than 1.0, an unknown type or endpoint.
    """
    missing = [name for name in _REQUIRED if not headers.get(name)]
    if missing:
        raise Rejected("malformed_event", f"not a binary-mode CloudEvent: missing {', '.join(missing)}")
    if headers["ce-specversion"] != "1.0":
        raise Rejected(
            "malformed_event", f"unsupported CloudEvents specversion {headers['ce-specversion']!r}"
        )
    kind = headers["ce-type"]
    if kind not in EVENT_TYPES:
        raise Rejected("unknown_type", f"unknown ce-type {kind!r}; expected one of {EVENT_TYPES}")
    if shadow_service and headers.get("ce-inferenceservicename") == shadow_service:
        track = "shadow"
    else:
        endpoint = headers.get("ce-endpoint") or "default"
        if endpoint not in ("default", "canary"):
            raise Rejected("unknown_endpoint", f"unknown ce-endpoint {endpoint!r}")
        track = "stable" if endpoint == "default" else "canary"
    return headers["ce-id"], kind, track, headers.get("ce-time") or ""


def http_events(content_type: str, headers: Any, body: bytes) -> list[tuple[Any, bytes]]:
    """Each event of an HTTP CloudEvents request as (binary-mode headers, data), in any content mode.

    Binary mode (KServe's logger) passes through. Structured mode (``application/cloudevents+json``, what
    the CloudEvents SDKs' ``to_structured`` sends) carries the attributes in the JSON envelope: each becomes
    its ``ce-`` header; ``data`` (JSON, or text as is) or ``data_base64`` is the body. Batched mode
    (``application/cloudevents-batch+json``) is a JSON array of structured envelopes (may be empty).

    Raises:
        Rejected: An envelope that is not a JSON object, or a batch that is not an array (its index named).
    """
    mode = content_type.split(";", 1)[0].strip().lower()
    if mode == BATCH:
        batch = loads(body)
        if not isinstance(batch, list):
            raise Rejected("malformed_event", "a CloudEvents batch must be a JSON array of events")
        return [_structured(envelope, f"event {i}: ") for i, envelope in enumerate(batch)]
    if mode != STRUCTURED:
        return [(headers, body)]
    return [_structured(loads(body))]


def _structured(envelope: Any, where: str = "") -> tuple[dict[str, str], bytes]:
    if not isinstance(envelope, dict):
        raise Rejected("malformed_event", f"{where}a structured CloudEvent must be a JSON object")
    # As the HTTP binding maps them: each attribute to its ce- header, datacontenttype to Content-Type.
    attributes = {
        "content-type" if k == "datacontenttype" else f"ce-{k}": str(v)
        for k, v in envelope.items()
        if k not in ("data", "data_base64")
    }
    if "data_base64" in envelope:
        try:
            return attributes, base64.b64decode(envelope["data_base64"], validate=True)
        except (TypeError, ValueError) as error:
            raise Rejected("malformed_event", f"{where}data_base64 is not base64: {error}") from None
    data = envelope.get("data")
    if isinstance(data, str):
        return attributes, data.encode()
    return attributes, ParsedBytes(json.dumps(data).encode(), data)


class ParsedBytes(bytes):
    """JSON bytes that carry their parsed value.

    A batched event's ``data`` is checked without parsing the bytes again (:func:`loads` returns
    ``parsed``); the bytes are what the log stores.
    """

    parsed: Any

    def __new__(cls, data: bytes, parsed: Any) -> ParsedBytes:  # noqa: D102
        out = super().__new__(cls, data)
        out.parsed = parsed
        return out


def _v2_columns(inputs: Any) -> dict[str, list[Any]]:
    if not isinstance(inputs, list) or not inputs:
        raise Rejected("bad_body", "v2 'inputs' must be a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise Rejected("bad_body", "each v2 tensor needs a 'name', 'shape', 'datatype' and 'data'")
        data = tensor.get("data")
        shape = tensor.get("shape")
        if not isinstance(data, list) or not isinstance(shape, list):
            raise Rejected("bad_body", f"tensor {tensor['name']!r} needs list 'shape' and 'data'")
        flat = data if not data or not isinstance(data[0], list) else [v for row in data for v in row]
        names = _BLOCKS.get(tensor["name"], MODEL_INPUTS)
        if len(shape) == 2 and shape[1] == len(names) and len(flat) == shape[0] * shape[1]:
            for j, name in enumerate(names):
                columns[name] = flat[j :: shape[1]]
            continue
        columns[tensor["name"]] = flat
    return columns


def _rows_from_columns(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    sizes = {len(values) for values in columns.values()}
    if len(sizes) != 1:
        raise Rejected("bad_body", f"v2 tensors have different batch sizes: {sorted(sizes)}")
    n = sizes.pop()
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def _request_rows(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, dict) and "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise Rejected("bad_body", "v1 'instances' must be a non-empty list of objects")
        return rows
    if isinstance(payload, dict) and "inputs" in payload:
        return _rows_from_columns(_v2_columns(payload["inputs"]))
    raise Rejected("bad_body", "request body is neither v1 {'instances': ...} nor v2 {'inputs': ...}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejected("feature_mismatch", f"feature {name!r} must be a finite number, got {value!r}")
    return float(value)


def request_features(body: bytes) -> list[dict[str, Any]]:
    """Rows of a request body, each with ``transaction_id`` (or None) and the testable features.

    Args:
        body: v1 ``{"instances": [{...}]}`` or v2 ``{"inputs": [tensors]}`` JSON, either with all of
            MODEL_INPUTS (predictor) or with the raw transaction fields (transformer).

    Returns:
        One dict per instance: ``transaction_id`` plus feature name → float or str.

    Raises:
        Rejected: Not JSON, not v1/v2, or the instances do not match the model's features.
    """
    rows = _request_rows(loads(body))
    if not rows:
        raise Rejected("empty", "the request has no instances")
    first = rows[0]
    if all(name in first for name in MODEL_INPUTS):
        names: tuple[str, ...] = MODEL_INPUTS
        raw = False
    elif "amount" in first:
        names, raw = RAW_FIELDS, True
    else:
        absent = [name for name in MODEL_INPUTS if name not in first][:5]
        raise Rejected("feature_mismatch", f"instances lack the model's features, e.g. {absent}")
    out = []
    for row in rows:
        features: dict[str, Any] = {ID_FIELD: _text(row.get(ID_FIELD)) or None}
        for name in names:
            if name not in row:
                raise Rejected("feature_mismatch", f"an instance lacks feature {name!r}")
            value = row[name]
            if raw and name == "amount":
                amount = 0.0 if value is None else _number(name, value)
                features["log_amount"] = math.log1p(max(amount, 0.0))
            elif name in _NUMERIC:
                features[name] = _number(name, value)
            else:
                features[name] = _text(value)
        out.append(features)
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def response_scores(body: bytes) -> list[float]:
    """Fraud scores from a response: v1 ``predictions`` (numbers or ``{"score": ...}``) or v2 ``outputs``.

    Raises:
        Rejected: When no score can be read.
    """
    return parse_response(body)[0]


def parse_response(body: bytes) -> tuple[list[float], str | None]:
    """:func:`response_scores` and the response's ``model_version`` (None when it names none).

    Raises:
        Rejected: When no score can be read.
    """
    payload = loads(body)
    if isinstance(payload, dict) and "predictions" in payload:
        values = payload["predictions"]
        if not isinstance(values, list):
            raise Rejected("bad_body", "v1 'predictions' must be a list")
        values = [v.get("score") if isinstance(v, dict) else v for v in values]
        values = [v[0] if isinstance(v, list) and v else v for v in values]
    elif isinstance(payload, dict) and isinstance(payload.get("outputs"), list) and payload["outputs"]:
        outputs = {o.get("name"): o for o in payload["outputs"] if isinstance(o, dict)}
        tensor = outputs.get("score") or outputs.get("scores") or next(iter(outputs.values()), None)
        values = tensor.get("data") if isinstance(tensor, dict) else None
        if not isinstance(values, list):
            raise Rejected("bad_body", "v2 output tensor has no 'data' list")
        values = [v for row in values for v in row] if values and isinstance(values[0], list) else values
    else:
        raise Rejected("bad_body", "response body is neither v1 {'predictions': ...} nor v2 {'outputs': ...}")
    version = payload.get("model_version")
    return [_number("score", v) for v in values], None if version is None else str(version)


def loads(body: bytes, reason: str = "bad_json", what: str = "body") -> Any:
    """The JSON of a body, or :class:`Rejected` (nesting past the recursion limit too: a client's error)."""
    if isinstance(body, ParsedBytes):
        return body.parsed
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise Rejected(reason, f"{what} is not JSON: {error}") from None
    except RecursionError:
        raise Rejected(reason, f"{what} is nested too deeply") from None


def validate(kind: str, body: bytes) -> None:
    """Raise :class:`Rejected` unless the body of a ``kind`` event can be used."""
    if kind == REQUEST_TYPE:
        request_features(body)
    elif kind == RESPONSE_TYPE:
        response_scores(body)
