"""Hypothesis strategies of the REST fuzz cases: valid-looking requests of every endpoint, then broken.

Each endpoint's strategy builds a request the server should accept (v1/v2 bodies as in
:mod:`relearn.serving.tensors`; v2 in the shapes of KServe's published OpenAPI document
``docs/predict-api/v2/rest_predict_v2.yaml``: ``inference_request`` → ``request_input`` → ``tensor_data``)
and then, about half the time, a fault: a field dropped, added, nulled, out of its domain or replaced by
junk (wrong JSON types, NaN and Infinity literals, huge numbers, deep nesting); then the bytes themselves
(truncated, not UTF-8, empty, random) and the content type.

Hypothesis draws the structure and the faults; the bulk of valid values (17 numbers a row, ids, times) come
from a ``random.Random`` seeded by one Hypothesis draw, so a case costs a few draws, not a hundred.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from relearn.data import contract
from relearn.data.schema import REQUEST_FIELDS
from relearn.events import EVENT_TYPES
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS

DATATYPES = ("BOOL", "UINT8", "UINT32", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "fp32", "")
CONTENT_TYPES = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
    "",
)


@dataclass(frozen=True)
class Case:
    """One HTTP request of a fuzz run."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # what a failure report shows: short enough to read
        body = self.body[:400] + (b"..." if len(self.body) > 400 else b"")
        return f"Case(body={body!r}, content_type={self.content_type!r}, headers={self.headers!r})"


# ---------------------------------------------------------------------------------------------- values
HUGE = (2**31, 2**63, 2**64, -(2**63) - 1, 2**40, 10**30, 1e308, -1e308, 5e-324)
numbers = st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HUGE), st.integers()
)
junk = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
seeds = st.integers(0, 2**32 - 1).map(random.Random)


def mostly(valid: st.SearchStrategy, *wrong: st.SearchStrategy, weight: int = 8) -> st.SearchStrategy:
    """``valid`` more often than any of the ``wrong`` strategies, the more so the larger ``weight``.

    Not ``one_of(valid, valid, ..., wrong)``: Hypothesis draws its branches about evenly whatever the repeats.
    """
    pick = lambda i: valid if i < weight else wrong[i - weight]  # noqa: E731
    return st.integers(0, weight + len(wrong) - 1).flatmap(pick)


@dataclass(frozen=True)
class Field:
    """A field of a record: a valid value from a seeded random generator, wrong ones from Hypothesis."""

    valid: Callable[[random.Random], Any]
    wrong: st.SearchStrategy = junk


def faulty(draw: Any, record: dict[str, Any], fields: dict[str, Field], odds: int = 3) -> dict[str, Any]:
    """``record``, or (about one time in ``odds``) with one fault: a value wrong or junk, a field dropped,
    nulled or added."""
    fault = draw(mostly(st.none(), st.sampled_from(["wrong", "junk", "drop", "null", "extra"]), weight=odds))
    if fault is None:
        return record
    name = draw(st.sampled_from(sorted(fields)))
    if fault == "wrong":
        record[name] = draw(fields[name].wrong)
    elif fault == "junk":
        record[name] = draw(junk)
    elif fault == "drop":
        record.pop(name, None)
    elif fault == "null":
        record[name] = None
    else:
        record[draw(st.text(min_size=1, max_size=8))] = draw(junk)
    return record


def instances(draw: Any, fields: dict[str, Field], required: tuple[str, ...]) -> list[dict]:
    """1-3 records of ``fields`` (sometimes none; optional fields left out at random); about half the time
    one of them has a fault."""
    rng = draw(seeds)
    out = [
        {name: f.valid(rng) for name, f in fields.items() if name in required or rng.random() < 0.8}
        for _ in range(rows(draw))
    ]
    if out:
        faulty(draw, out[rng.randrange(len(out))], fields, odds=1)
    return out


def rows(draw: Any) -> int:
    """How many rows a batch has: 1-3, sometimes none."""
    return draw(mostly(st.integers(1, 3), st.just(0)))


def batch(fields: dict[str, Field], required: tuple[str, ...]) -> st.SearchStrategy:
    """A JSON list of records (the feed's and the detector's bodies), sometimes junk instead."""
    return mostly(st.composite(lambda draw: instances(draw, fields, required))(), junk)


# -------------------------------------------------------------------------------------------- encoding
@st.composite
def encoded(
    draw: Any, payloads: st.SearchStrategy, headers: st.SearchStrategy | None = None, depth: int = 10**5
) -> Case:
    """The payload as JSON bytes (NaN / Infinity as their literals), mostly intact, sometimes mangled.

    ``depth``: the deepest nesting of a "deep" body (``[`` * n + body + ``]`` * n).
    """
    raw = json.dumps(draw(payloads), allow_nan=True).encode()
    how = draw(mostly(st.none(), st.sampled_from(["cut", "latin1", "bytes", "empty", "deep", "splice"])))
    if how == "cut":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "latin1":  # valid JSON structure, bytes that are not UTF-8
        raw = raw.replace(b'"', b'"\xe9\xff', 1)
    elif how == "bytes":
        raw = draw(st.binary(max_size=64))
    elif how == "empty":
        raw = b""
    elif how == "deep":
        n = draw(st.sampled_from([d for d in (64, 600, 1100, 5000, 100_000) if d <= depth]))
        raw = b"[" * n + raw + b"]" * n
    elif how == "splice":
        at = draw(st.integers(0, len(raw)))
        piece = draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"\x00", b",", b"}", b"9" * 400]))
        raw = raw[:at] + piece + raw[at:]
    ctype = draw(mostly(st.just("application/json"), st.sampled_from(CONTENT_TYPES)))
    return Case(raw, ctype, draw(headers) if headers is not None else ())


# ------------------------------------------------------------------------------------------ v2 tensors
@dataclass(frozen=True)
class Spec:
    """An input the server expects: name, datatype, row width (None: shape [N]) and a valid element."""

    name: str
    datatype: str
    width: int | None
    value: Callable[[random.Random], Any]


TENSOR_FAULTS = ("datatype", "shape", "huge", "nested", "data", "count", "drop", "null", "extra")


def tensor(draw: Any, spec: Spec, n: int, rng: random.Random, fault: str | None) -> dict:
    """A v2 ``request_input`` of ``n`` rows, with ``fault`` (datatype, shape, data, fields) if any."""
    shape = [n] if spec.width is None else [n, spec.width]
    flat = [spec.value(rng) for _ in range(n * (spec.width or 1))]
    out = {"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": flat}
    if fault == "datatype":
        out["datatype"] = draw(st.sampled_from(DATATYPES) | st.text(max_size=5) | junk)
    elif fault == "shape":
        out["shape"] = draw(st.lists(st.integers(-2, 20), max_size=3) | junk)
    elif fault == "huge":
        out["shape"] = draw(st.sampled_from([[2**40, spec.width or 1], [2**64], [2**31, 2**31], [-1]]))
    elif fault == "nested":
        out["data"] = [flat]
    elif fault == "data":
        out["data"] = draw(st.lists(junk, max_size=4) | junk)
    elif fault == "count":
        out["data"] = flat[: draw(st.integers(0, len(flat)))] + [spec.value(rng)] * draw(st.integers(0, 2))
    elif fault in ("drop", "null"):
        key = draw(st.sampled_from(sorted(out)))
        out[key] = None
        if fault == "drop":
            del out[key]
    elif fault == "extra":
        out[draw(st.sampled_from(["parameters", "contents", "x"]))] = draw(junk)
    return out


@st.composite
def v2_request(draw: Any, specs: list[Spec]) -> dict:
    """A v2 ``inference_request`` of ``specs`` (the same rows each); one input maybe faulty, missing or
    doubled."""
    rng, n = draw(seeds), rows(draw)
    fault = draw(mostly(st.none(), st.sampled_from([*TENSOR_FAULTS, "missing", "double"]), weight=3))
    inputs = [tensor(draw, spec, n, rng, fault if i == 0 else None) for i, spec in enumerate(specs)]
    rng.shuffle(inputs)
    if fault == "missing":
        inputs = inputs[: draw(st.integers(0, len(inputs) - 1))]
    elif fault == "double":
        inputs = [*inputs, inputs[0]]
    body = {"id": f"r{rng.getrandbits(32)}", "inputs": inputs}
    fields = {
        "id": Field(lambda r: "", st.integers() | st.text(max_size=4)),
        "inputs": Field(lambda r: inputs),
        "parameters": Field(lambda r: {}, st.dictionaries(st.text(max_size=6), junk, max_size=2)),
        "outputs": Field(
            lambda r: [], st.lists(st.fixed_dictionaries({"name": st.sampled_from(["score", "x"])}))
        ),
    }
    return faulty(draw, body, fields, odds=8)


def _choice(values: tuple[str, ...]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(values)


predictor_specs = [
    Spec("numeric", "FP32", len(NUMERIC_INPUTS), lambda rng: rng.uniform(0, 3)),
    Spec(
        "categorical", "BYTES", len(CATEGORICAL_INPUTS), _choice(("grocery", "pos", "DE", "EUR", "13", "?"))
    ),
    Spec("transaction_id", "BYTES", None, lambda rng: f"t{rng.getrandbits(40):x}"),
]
predictor_v2 = v2_request(predictor_specs)
_PREDICTOR_FIELDS = {
    **{name: Field(lambda rng: rng.uniform(0, 3), numbers | st.text(max_size=3)) for name in NUMERIC_INPUTS},
    **{name: Field(_choice(values)) for name, values in CATEGORICAL_INPUTS.items()},
    "transaction_id": Field(lambda rng: f"t{rng.getrandbits(40):x}"),
}


@st.composite
def predictor_v1(draw: Any) -> dict:
    """``{"instances": [rows of the model's inputs]}``."""
    body = {"instances": instances(draw, _PREDICTOR_FIELDS, (*NUMERIC_INPUTS, *CATEGORICAL_INPUTS))}
    return faulty(draw, body, {"instances": Field(lambda r: [])}, odds=8)


# -------------------------------------------------------------------------------------------- transactions
def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# The state takes events up to an hour late and 5 minutes early: valid times are within that.
TIMES = Field(
    lambda rng: _at(rng.uniform(-3000, 200)),
    st.one_of(
        st.integers(-(10**6), 10**6).map(_at),
        st.sampled_from(
            ["yesterday", "2026-02-30T00:00:00", "9999-12-31T23:59:59", "0001-01-01", "", "1e999"]
        ),
        st.text(max_size=12),
        numbers,
    ),
)
IDS = st.sampled_from(["", " "]) | st.text(max_size=6)
TRANSACTION = {
    "transaction_id": Field(lambda rng: f"t{rng.getrandbits(48):x}", IDS),
    "event_timestamp": TIMES,
    "user_id": Field(_choice(("u1", "u2", "u3")), IDS),
    "merchant_id": Field(_choice(("m1", "m2")), IDS),
    "amount": Field(lambda rng: round(rng.uniform(0.5, 5000), 2), st.floats(-10, 60_000) | numbers),
    **{
        name: Field(_choice(CATEGORICAL_INPUTS[name]), st.none() | st.text(max_size=4))
        for name in ("currency", "merchant_category", "channel", "country")
    },
    "device_id": Field(_choice(("d1", "d2"))),
}
REQUIRED_TXN = contract.required()  # the data contract's: valid records carry these (currency too)


@st.composite
def transformer_v1(draw: Any) -> dict:
    """``{"instances": [raw transactions]}``."""
    body = {"instances": instances(draw, TRANSACTION, REQUIRED_TXN)}
    return faulty(draw, body, {"instances": Field(lambda r: [])}, odds=8)


transformer_specs = [
    Spec(name, "FP64" if name == "amount" else "BYTES", None, TRANSACTION[name].valid)
    for name in REQUEST_FIELDS
]
transformer_v2 = v2_request(transformer_specs)
feed_transactions = batch(TRANSACTION, REQUIRED_TXN)
feed_chargebacks = batch(
    {
        "transaction_id": TRANSACTION["transaction_id"],
        "merchant_id": TRANSACTION["merchant_id"],
        "received_timestamp": TIMES,
    },
    ("transaction_id", "merchant_id", "received_timestamp"),
)
labels = batch(
    {
        "transaction_id": TRANSACTION["transaction_id"],
        "chargeback_timestamp": TIMES,
        "is_fraud": Field(lambda rng: rng.random() < 0.5),
    },
    ("transaction_id", "chargeback_timestamp"),
)


# ---------------------------------------------------------------------------------- CloudEvents (binary)
@st.composite
def ce_headers(draw: Any) -> tuple[tuple[str, str], ...]:
    """KServe's payload-logger headers, sometimes one missing or wrong."""
    rng = draw(seeds)
    fields = {
        "ce-id": Field(lambda r: f"{r.getrandbits(64):x}"),
        "ce-type": Field(_choice(EVENT_TYPES)),
        "ce-source": Field(lambda r: "http://localhost:9081/"),
        "ce-specversion": Field(lambda r: "1.0"),
        "ce-time": Field(lambda r: _at(0)),
        "ce-inferenceservicename": Field(lambda r: "relearn-fraud"),
        "ce-endpoint": Field(_choice(("default", "canary"))),
        "ce-component": Field(lambda r: "predictor"),
    }
    out = {name: f.valid(rng) for name, f in fields.items()}
    fault = draw(mostly(st.none(), st.sampled_from(sorted(fields)), weight=3))
    if fault is not None and draw(st.booleans()):
        del out[fault]
    elif fault is not None:
        out[fault] = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12))
    return tuple(out.items())


def cloud_event_bodies() -> st.SearchStrategy:
    """Request bodies (predictor v1/v2) and response bodies (v1 predictions, v2 outputs), or junk."""
    score = Spec("score", "FP32", None, lambda rng: rng.random())
    v1_response = batch({"score": Field(lambda rng: rng.random(), numbers)}, ("score",)).map(
        lambda predictions: {"predictions": predictions}
    )
    v2_response = v2_request([score]).map(lambda r: {"outputs": r.get("inputs"), "model_version": "1"})
    return st.one_of(predictor_v1(), predictor_v2, v1_response, v2_response, junk)


BATCH = "application/cloudevents-batch+json"


@st.composite
def _envelopes(draw: Any) -> list[dict]:
    """0-3 structured CloudEvents: KServe's attributes (as :func:`ce_headers` draws them) and a body."""
    return [
        {**{k.removeprefix("ce-"): v for k, v in draw(ce_headers())}, "data": draw(cloud_event_bodies())}
        for _ in range(draw(st.integers(0, 3)))
    ]


# Batched content mode: a JSON array of envelopes, mangled as any body is, with the batch content type.
cloud_event_batches = encoded(_envelopes()).map(lambda case: Case(case.body, BATCH))
