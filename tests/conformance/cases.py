"""What the suite sends each endpoint and what it must answer: inputs, outputs, metadata, error messages.

The router serves the predictor (its stable version), so it is checked against the predictor's contract.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np

from conformance.clients import Tensor
from relearn.data.schema import REQUEST_FIELDS
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.serving import tensors

MODEL = "relearn-fraud"
UNKNOWN = "no-such-model"
VERSION = "1"  # the predictor's --model-version
THRESHOLD = 0.5  # make_artifacts' threshold
ENDPOINTS = ("predictor", "transformer", "router")
ROWS = 2
CATEGORIES = ["grocery", "pos", "DE", "EUR", "13"]
UNKNOWN_MODEL = f"Model with name {UNKNOWN} does not exist."  # KServe's text, REST and gRPC alike


def contract(endpoint: str) -> str:
    """Whose tensor interface an endpoint serves."""
    return "transformer" if endpoint == "transformer" else "predictor"


def model_arrays(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's inputs: numeric ``[rows, 17]`` FP32 and categorical ``[rows, 5]`` strings (fixed)."""
    numeric = np.random.default_rng(0).uniform(0, 3, size=(rows, len(NUMERIC_INPUTS))).astype(np.float32)
    return numeric, np.array([CATEGORIES] * rows, dtype=object)


def transactions(rows: int = ROWS) -> dict[str, list]:
    """Raw transactions for the transformer: new ids, cards and merchants each call, so the features (and
    the scores) are the same on every call."""
    now = datetime.now(UTC).isoformat()
    new = lambda prefix: [f"{prefix}-{uuid.uuid4().hex}" for _ in range(rows)]  # noqa: E731
    fields = {
        "transaction_id": new("tx"),
        "event_timestamp": [now] * rows,
        "user_id": new("card"),
        "merchant_id": new("merchant"),
        "amount": [12.5 * (i + 1) for i in range(rows)],
        "currency": ["EUR"] * rows,
        "merchant_category": ["grocery"] * rows,
        "channel": ["pos"] * rows,
        "country": ["DE"] * rows,
        "device_id": ["device-1"] * rows,
    }
    assert list(fields) == list(REQUEST_FIELDS)
    return fields


def inputs(endpoint: str) -> list[Tensor]:
    """A valid v2 request's inputs for ``endpoint``."""
    if contract(endpoint) == "predictor":
        numeric, categorical = model_arrays()
        return [Tensor(tensors.NUMERIC, "FP32", numeric), Tensor(tensors.CATEGORICAL, "BYTES", categorical)]
    return [
        Tensor(name, *(("FP64", np.array(v)) if name == "amount" else ("BYTES", np.array(v, dtype=object))))
        for name, v in transactions().items()
    ]


def outputs(endpoint: str) -> list[str]:
    ids = [] if contract(endpoint) == "predictor" else [tensors.TRANSACTION_ID]
    return [*ids, tensors.SCORE, tensors.DECISION]


def bad_shape(endpoint: str) -> tuple[list[Tensor], str, str | None]:
    """Inputs with one tensor of the wrong rank or width, the input that is wrong, and the exact message
    (None for the transformer: its wording belongs to the data contract, which is changing, issue 17)."""
    good = inputs(endpoint)
    if contract(endpoint) == "predictor":
        numeric = good[0].array[:, :3].copy()
        message = "input 'numeric': shape [2, 3], expected [N, 17]"
        return [Tensor("numeric", "FP32", numeric), good[1]], "numeric", message
    bad = [Tensor(t.name, t.datatype, t.array.reshape(-1, 1)) if t.name == "amount" else t for t in good]
    return bad, "amount", None


def metadata(endpoint: str) -> dict:
    """The v2 model metadata an endpoint must publish."""
    if contract(endpoint) == "predictor":
        return {"name": MODEL, "inputs": tensors.INPUT_METADATA, "outputs": tensors.OUTPUT_METADATA}
    from relearn.serving.config import TransformerSettings
    from relearn.serving.transformer_model import FraudTransformer

    model = FraudTransformer(TransformerSettings())
    return {"name": MODEL, "inputs": model.get_input_types(), "outputs": model.get_output_types()}


def v1_instances(endpoint: str) -> list[dict]:
    """A valid v1 ``instances`` list: model inputs (predictor) or raw transactions (transformer)."""
    if contract(endpoint) == "predictor":
        numeric, categorical = model_arrays()
        names = list(NUMERIC_INPUTS) + list(CATEGORICAL_INPUTS)
        assert sorted(names) == sorted(MODEL_INPUTS)
        return [
            dict(zip(names, [*map(float, n), *c], strict=True))
            for n, c in zip(numeric, categorical, strict=True)
        ]
    fields = transactions()
    return [dict(zip(fields, row, strict=True)) for row in zip(*fields.values(), strict=True)]


def v1_bad_instance(endpoint: str) -> tuple[list[dict], str, str | None]:
    """Instances, one without a required field; that field; the exact message (as :func:`bad_shape`)."""
    rows = v1_instances(endpoint)
    if contract(endpoint) == "predictor":
        del rows[0]["user_txn_count_1h"]
        return rows, "user_txn_count_1h", "instances[0]: missing field(s) ['user_txn_count_1h']"
    del rows[0]["user_id"]
    return rows, "user_id", None
