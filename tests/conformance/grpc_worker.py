"""tritonclient.grpc calls, run in a worker process of their own, and the v2 typed-contents helpers.

tritonclient.grpc and KServe register the same protobuf symbols (``inference.ServerLiveRequest`` ...) in
the default descriptor pool, so they cannot be imported into one process; the suite's process imports
KServe, so every tritonclient.grpc call runs in a spawned worker (:class:`conformance.clients.TritonGrpc`).
Results cross the process boundary as plain values: ``("ok", value)`` or ``("error", code, message)``.
This module imports neither library at import time.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

# v2 typed contents: the InferTensorContents field of each datatype.
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
    "BOOL": "bool_contents",
}
NUMPY = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_, "BYTES": np.object_}


def plain(values: Any, datatype: str) -> list:
    """A tensor's values as a flat list of Python values (BYTES as str)."""
    flat = np.asarray(values, dtype=NUMPY[datatype]).reshape(-1).tolist()
    return [v.decode() if isinstance(v, bytes) else v for v in flat]


def typed(datatype: str, array: np.ndarray) -> list:
    """The values of a ``*_contents`` field (BYTES as bytes)."""
    if datatype == "BYTES":
        return [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
    return array.reshape(-1).tolist()


def from_json_contents(datatype: str, contents: dict) -> list:
    """Values of typed contents in the protobuf JSON mapping (bytes are base64 there)."""
    values = contents.get(CONTENTS[datatype], [])
    return [base64.b64decode(v).decode() for v in values] if datatype == "BYTES" else values


def metadata_shapes(meta: dict) -> dict:
    """Model metadata with int shapes (the protobuf JSON mapping writes int64 as strings)."""
    for key in ("inputs", "outputs"):
        meta[key] = [
            {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
            for t in meta.get(key, [])
        ]
    return meta


def _call(fn: Any) -> tuple:
    from tritonclient.utils import InferenceServerException

    try:
        return ("ok", fn())
    except InferenceServerException as exc:
        return ("error", str(exc.status()).removeprefix("StatusCode."), exc.message())


def _client(target: str) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(target)


def health(target: str, what: str, model: str = "") -> tuple:
    """``live``, ``ready`` or ``model_ready``."""
    client = _client(target)
    calls = {
        "live": client.is_server_live,
        "ready": client.is_server_ready,
        "model_ready": lambda: client.is_model_ready(model),
    }
    return _call(calls[what])


def metadata(target: str, model: str | None) -> tuple:
    """Server metadata (``model`` None) or the model's, as JSON-like dicts."""
    client = _client(target)
    if model is None:
        return _call(lambda: client.get_server_metadata(as_json=True))
    return _call(lambda: metadata_shapes(client.get_model_metadata(model, as_json=True)))


def infer(target: str, model: str, tensors: list, outputs: list, request_id: str, raw: bool) -> tuple:
    """ModelInfer with raw contents (``InferenceServerClient.infer``) or typed contents (its protobuf stub).

    ``tensors``: ``(name, datatype, shape, array)``; returns ``{"outputs", "model_version", "id", "binary"}``.
    """
    return _call(lambda: (_infer_raw if raw else _infer_typed)(target, model, tensors, outputs, request_id))


def _infer_raw(target: str, model: str, tensors: list, outputs: list, request_id: str) -> dict:
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, datatype, shape, array in tensors:
        tensor = grpcclient.InferInput(name, list(shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = _client(target).infer(model, inputs, outputs=wanted, request_id=request_id)
    response = result.get_response()
    by_name = {o.name: o.datatype for o in response.outputs}
    return {
        "outputs": {name: plain(result.as_numpy(name), by_name[name]) for name in by_name},
        "model_version": response.model_version,
        "id": response.id,
        "binary": len(response.raw_output_contents) > 0,
    }


def _infer_typed(target: str, model: str, tensors: list, outputs: list, request_id: str) -> dict:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, shape, array in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        getattr(tensor.contents, CONTENTS[datatype]).extend(typed(datatype, array))
    for name in outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(target) as channel:
        try:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            from tritonclient.utils import InferenceServerException

            raise InferenceServerException(exc.details(), status=exc.code().name) from None
    return {
        "outputs": {
            o.name: plain(list(getattr(o.contents, CONTENTS[o.datatype])), o.datatype)
            for o in response.outputs
        },
        "model_version": response.model_version,
        "id": response.id,
        "binary": len(response.raw_output_contents) > 0,
    }
