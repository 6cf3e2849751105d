"""The predictor's v2 tensor interface, shared by the predictor, the transformer and any v2 client.

Inputs (one row per transaction, columns in the order of :mod:`relearn.features.spec`):

- ``numeric``: FP32, shape ``[N, 17]`` — ``NUMERIC_INPUTS`` (finite values only).
- ``categorical``: BYTES, shape ``[N, 5]`` — ``CATEGORICAL_INPUTS`` as UTF-8 strings (unknown values map to
  the model's out-of-vocabulary slot, so the predictor owns the vocabularies).
- ``transaction_id`` (optional): BYTES, shape ``[N]`` — not scored, only logged, so the drift detector
  joins the chargebacks to the predictions (the transformer sends it).

Outputs: ``score`` FP32 ``[N]`` (fraud probability) and ``decision`` BOOL ``[N]`` (score >= the registered
version's threshold). Raw contents (``raw_input_contents`` / ``raw_output_contents``, or the REST binary
extension) work as in any v2 server: a request with raw inputs gets raw outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS

NUMERIC = "numeric"
CATEGORICAL = "categorical"
TRANSACTION_ID = "transaction_id"
SCORE = "score"
DECISION = "decision"
N_NUMERIC = len(NUMERIC_INPUTS)
N_CATEGORICAL = len(CATEGORICAL_INPUTS)

INPUT_METADATA: list[dict[str, Any]] = [
    {"name": NUMERIC, "datatype": "FP32", "shape": [-1, N_NUMERIC]},
    {"name": CATEGORICAL, "datatype": "BYTES", "shape": [-1, N_CATEGORICAL]},
]
ID_METADATA: dict[str, Any] = {"name": TRANSACTION_ID, "datatype": "BYTES", "shape": [-1]}  # optional
OUTPUT_METADATA: list[dict[str, Any]] = [
    {"name": SCORE, "datatype": "FP32", "shape": [-1]},
    {"name": DECISION, "datatype": "BOOL", "shape": [-1]},
]


def requested_outputs(request: Any, available: list[str]) -> tuple[list[str], list[Any] | None]:
    """The outputs a v2 request asks for and, over REST, each one's encoding (open inference protocol).

    A request that names outputs gets those alone, in its order; an output's ``binary_data`` parameter
    overrides the request's ``binary_data_output``. KServe's ``InferResponse`` applies a per-output choice
    only when it is given the requested outputs, and then drops the request-level default: each requested
    output is passed on with its choice resolved.

    Returns:
        The names to answer, and the requested outputs to hand to ``InferResponse`` (None: all, REST
        encoding by ``binary_data_output``).

    Raises:
        InvalidInput: A requested output the model does not have, named.
    """
    from kserve.protocol.infer_type import RequestedOutput

    from relearn.serving.errors import InvalidInput

    wanted = request.request_outputs or []
    if unknown := [o.name for o in wanted if o.name not in available]:
        raise InvalidInput(f"unknown output(s) {unknown}; the model's outputs are {available}")
    if not wanted:
        return list(available), None
    default = bool((request.parameters or {}).get("binary_data_output", False))
    resolved = [
        RequestedOutput(o.name, {**dict(o.parameters or {}), "binary_data": _binary(o, default)})
        for o in wanted
    ]
    return [o.name for o in wanted], None if request.from_grpc else resolved


def v2_response(
    request: Any, model: str, version: str, event_id: str, values: dict[str, tuple[str, np.ndarray]]
) -> Any:
    """The v2 ``InferResponse`` to ``request``: the outputs it asks for, each in the encoding it asks.

    ``values``: output name → (datatype, array); a request that names no outputs gets them all
    (:func:`requested_outputs`).
    """
    from kserve.protocol.infer_type import InferOutput, InferResponse

    binary = request.use_binary_outputs
    names, requested = requested_outputs(request, list(values))
    outputs = []
    for name in names:
        datatype, array = values[name]
        output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
        output.set_data_from_numpy(array, binary_data=binary)
        outputs.append(output)
    return InferResponse(
        response_id=event_id,
        model_name=model,
        model_version=version,
        infer_outputs=outputs,
        from_grpc=request.from_grpc,
        use_binary_outputs=binary,
        requested_outputs=requested,
    )


def _binary(output: Any, default: bool) -> bool:
    value = output.binary_data
    return default if value is None else bool(getattr(value, "bool_param", value))


def serialize_bytes(values: np.ndarray) -> bytes:
    """A BYTES tensor in the v2 raw format: each element as a 4-byte little-endian length plus its bytes."""
    parts = []
    for value in values.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode()
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor (inverse of :func:`serialize_bytes`)."""
    out, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        out.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return out


def v2_json(
    inputs: list[tuple[str, str, list[int], np.ndarray]], request_id: str, arrays: bool = False, **extra: Any
) -> dict:
    """A v2 JSON request or response body (``inputs`` or ``outputs`` key given by ``extra``).

    ``arrays``: numbers and booleans stay flat numpy arrays and text a list of str, for orjson's numpy
    support (the payload logger's encoder: no Python float per element).
    """
    tensors = []
    for name, datatype, shape, values in inputs:
        flat = values.reshape(-1)
        if arrays:
            data = flat.tolist() if flat.dtype == object else flat
        elif datatype == "BYTES":
            data = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        elif datatype == "BOOL":
            data = [bool(v) for v in flat]
        else:
            data = flat.tolist()
        tensors.append({"name": name, "datatype": datatype, "shape": list(shape), "data": data})
    key = extra.pop("key", "inputs")
    return {"id": request_id, **extra, key: tensors}
