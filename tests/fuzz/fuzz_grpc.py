"""Hypothesis strategies of the gRPC fuzz cases: serialized v2 messages, valid-looking, wrong or broken.

A case is ``(method, request bytes)``, sent over a raw channel (identity serializers): a ``ModelInferRequest``
with each tensor's datatype, shape (up to ``2**40`` rows), typed or raw contents maybe wrong, or random
and truncated protobuf bytes; the metadata methods with any model name and version, and unknown methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from fuzz.fuzz_strategies import DATATYPES, Spec, mostly, seeds
from relearn.serving.tensors import serialize_bytes

SERVICE = "/inference.GRPCInferenceService/"
MODEL = "relearn-fraud"
CONTENTS = {
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ELEMENT = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32, allow_nan=True, allow_infinity=True),
    "fp64_contents": st.floats(allow_nan=True, allow_infinity=True),
    "bytes_contents": st.binary(max_size=8),
}


@dataclass(frozen=True)
class Call:
    """One gRPC call of a fuzz run: the full method name and the serialized request."""

    method: str
    request: bytes

    def __repr__(self) -> str:
        tail = "..." if len(self.request) > 300 else ""
        return f"Call({self.method!r}, {self.request[:300]!r}{tail})"


def _pack(datatype: str, values: list[Any]) -> bytes:
    """Values as raw contents (v2 raw format), BYTES length-prefixed."""
    if datatype == "BYTES":
        return serialize_bytes(np.array(values, dtype=object))
    with np.errstate(over="ignore"):  # a huge FP32 value is inf: the "value" fault
        return np.asarray(values, dtype=np.float64 if datatype == "FP64" else np.float32).tobytes()


FAULTS = ("model", "version", "parameters", "empty", "missing", "name", "datatype", "shape", "huge")
FAULTS += ("contents", "value")


@st.composite
def infer_request(draw: Any, specs: list[Spec]) -> pb.ModelInferRequest:
    """A ModelInferRequest for ``specs`` with typed or raw contents; half of them with one or two faults."""
    faults = draw(mostly(st.just([]), st.lists(st.sampled_from(FAULTS), min_size=1, max_size=2), weight=1))
    rng = draw(seeds)
    request = pb.ModelInferRequest(model_name=MODEL, id=f"g{rng.getrandbits(32)}")
    if "model" in faults:
        request.model_name = draw(st.sampled_from(["", "nope", MODEL + "\x00"]))
    if "version" in faults:
        request.model_version = draw(st.sampled_from(["1", "999", "\x00"]))
    if "parameters" in faults:
        kind = draw(st.integers(0, 2))
        parameter = request.parameters[draw(st.sampled_from(["binary_data_output", "content_type", "x"]))]
        setattr(parameter, ("bool_param", "int64_param", "string_param")[kind], (True, 7, "s")[kind])
    raw = rng.random() < 0.5
    rows = 0 if "empty" in faults else rng.randint(1, 3)
    specs = list(specs)
    rng.shuffle(specs)
    for spec in specs:
        hit = set(faults) if spec is specs[0] else set()  # the first input takes the faults
        if "missing" in hit:
            continue
        n = rows * (spec.width or 1)
        values = [spec.value(rng) for _ in range(n)]
        if spec.datatype == "BYTES":
            values = [str(v).encode() for v in values]
        if "value" in hit and values:  # text that is not UTF-8, a number that is not finite
            text = spec.datatype == "BYTES"
            wrong = st.sampled_from([b"\xff", b"\xc3(", b"a\x80"]) if text else st.floats()
            values[rng.randrange(n)] = draw(wrong)
        tensor = request.inputs.add(name=draw(st.sampled_from(["", "x"])) if "name" in hit else spec.name)
        tensor.datatype = draw(st.sampled_from(DATATYPES)) if "datatype" in hit else spec.datatype
        tensor.shape[:] = [rows] if spec.width is None else [rows, spec.width]
        if "shape" in hit:
            tensor.shape[:] = draw(st.lists(st.integers(-(2**62), 2**62), max_size=3))
        if "huge" in hit:
            tensor.shape[:] = draw(st.sampled_from([[2**40, spec.width or 1], [2**40], [2**31, 2**31], [-1]]))
        if raw:
            payload = _pack(spec.datatype, values)
            if "contents" in hit:
                cut = st.just(payload[:-1]) | st.just(b"\xff\xff\xff\x7f" + payload)
                payload = draw(st.binary(max_size=40) | cut)
            request.raw_input_contents.append(payload)
            continue
        field = CONTENTS.get(spec.datatype)
        if "contents" in hit:
            field, n = draw(st.sampled_from(list(_ELEMENT))), draw(st.integers(0, n + 3))
            values = draw(st.lists(_ELEMENT[field], min_size=n, max_size=n))
        getattr(tensor.contents, field).extend(values)
    return request


@st.composite
def mangled(draw: Any, message: st.SearchStrategy) -> bytes:
    """A message's bytes: mostly as serialized, else truncated, with bytes flipped or appended, or random."""
    data = draw(message).SerializeToString()
    how = draw(mostly(st.just("keep"), st.sampled_from(["cut", "flip", "append", "random"]), weight=3))
    if how == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    if how == "random":
        return draw(st.binary(max_size=64))
    return data


def infer_calls(specs: list[Spec]) -> st.SearchStrategy:
    return mangled(infer_request(specs)).map(lambda data: Call(SERVICE + "ModelInfer", data))


def metadata_calls() -> st.SearchStrategy:
    """The health and metadata methods with any name/version, and methods the service does not have."""
    names = st.sampled_from([MODEL] * 4 + ["", "nope", "../x"]) | st.text(max_size=10)
    versions = st.sampled_from(["", "1", "x"]) | st.text(max_size=4)
    messages = {
        "ServerLive": st.just(pb.ServerLiveRequest()),
        "ServerReady": st.just(pb.ServerReadyRequest()),
        "ServerMetadata": st.just(pb.ServerMetadataRequest()),
        "ModelReady": st.builds(pb.ModelReadyRequest, name=names, version=versions),
        "ModelMetadata": st.builds(pb.ModelMetadataRequest, name=names, version=versions),
        "Nope": st.just(pb.ServerLiveRequest()),
    }
    methods = st.sampled_from(sorted(messages))
    known = methods.flatmap(lambda m: mangled(messages[m]).map(lambda data: Call(SERVICE + m, data)))
    unknown = st.sampled_from(["/other.Service/ModelInfer", SERVICE, SERVICE + "ModelStreamInfer"])
    return mostly(known, st.builds(Call, unknown, st.binary(max_size=8)))
