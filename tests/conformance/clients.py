"""Standard v2 clients behind one small interface, so each test reads as client × endpoint × protocol.

Every adapter answers ``live``, ``ready``, ``model_ready``, ``server_metadata``, ``model_metadata`` and
``infer`` (the operations its client has: ``ops``) with plain Python values, and raises :class:`Failure`
with what the client saw: the HTTP status (int) or the gRPC status code name, and the error message the
client extracted (REST: the body's ``error``; gRPC: the status details).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

import conformance.grpc_worker as worker

HEALTH = frozenset({"live", "ready", "model_ready"})
ALL_OPS = HEALTH | {"server_metadata", "model_metadata", "infer"}


@dataclass(frozen=True)
class Tensor:
    """One v2 input: name, datatype and values (its shape, unless ``shape`` overrides it)."""

    name: str
    datatype: str
    array: np.ndarray
    shape: tuple[int, ...] | None = None

    def spec(self) -> tuple[str, str, list[int], np.ndarray]:
        return self.name, self.datatype, list(self.shape or self.array.shape), self.array


class Failure(Exception):
    """A call the server refused: ``code`` (HTTP status or gRPC code name), ``message``, raw ``body``."""

    def __init__(self, code: int | str, message: str, body: Any = None, content_type: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.body, self.content_type = code, message, body, content_type


class Client:
    """Base adapter; ``url`` / ``target`` are the endpoint's REST base URL and gRPC host:port."""

    name = ""
    protocol = "rest"
    ops: frozenset[str] = ALL_OPS

    def address(self, endpoint: Any) -> str:
        return endpoint.url if self.protocol == "rest" else endpoint.grpc


# ----------------------------------------------------------------------------------------------- REST
class Curl(Client):
    """``curl`` with its defaults: ``-d`` sends ``application/x-www-form-urlencoded``."""

    name = "curl"

    def request(self, url: str, data: str | None = None, method: str | None = None) -> tuple[int, str, Any]:
        """(status, content type, JSON body or text) of one curl call."""
        cmd = ["curl", "-sS", "-w", "\n%{http_code} %{content_type}", url]
        cmd += ["-d", data] if data is not None else []
        cmd += ["-X", method] if method else []
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
        text, _, tail = out.rpartition("\n")
        status, _, content_type = tail.partition(" ")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return int(status), content_type, body

    def get(self, url: str, data: str | None = None) -> Any:
        status, content_type, body = self.request(url, data)
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            raise Failure(status, str(error), body, content_type)
        return body

    def live(self, url: str) -> bool:
        return self.get(f"{url}/v2/health/live")["live"]

    def ready(self, url: str) -> bool:
        return self.get(f"{url}/v2/health/ready")["ready"]

    def model_ready(self, url: str, model: str) -> bool:
        return self.get(f"{url}/v2/models/{model}/ready")["ready"]

    def server_metadata(self, url: str) -> dict:
        return self.get(f"{url}/v2")

    def model_metadata(self, url: str, model: str) -> dict:
        return self.get(f"{url}/v2/models/{model}")

    def infer(self, url: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str) -> dict:
        tensors = [
            {"name": n, "datatype": d, "shape": s, "data": worker.plain(a, d)}
            for n, d, s, a in (t.spec() for t in inputs)
        ]
        body = {"id": request_id, "inputs": tensors, "outputs": [{"name": n} for n in outputs]}
        reply = self.get(f"{url}/v2/models/{model}/infer", json.dumps(body))
        return {
            "outputs": {o["name"]: worker.plain(o["data"], o["datatype"]) for o in reply["outputs"]},
            "model_version": reply.get("model_version"),
            "id": reply.get("id"),
            "binary": False,
        }


class TritonHttp(Client):
    """NVIDIA's ``tritonclient.http``, JSON tensors (``binary_data=False``) or its binary extension."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.name = f"tritonclient.http.{'binary' if binary else 'json'}"

    def _call(self, url: str, fn: Any) -> Any:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            return fn(client)
        except InferenceServerException as exc:
            raise Failure(int(exc.status()), exc.message()) from None
        finally:
            client.close()

    def live(self, url: str) -> bool:
        return self._call(url, lambda c: c.is_server_live())

    def ready(self, url: str) -> bool:
        return self._call(url, lambda c: c.is_server_ready())

    def model_ready(self, url: str, model: str) -> bool:
        return self._call(url, lambda c: c.is_model_ready(model))

    def server_metadata(self, url: str) -> dict:
        return self._call(url, lambda c: c.get_server_metadata())

    def model_metadata(self, url: str, model: str) -> dict:
        return self._call(url, lambda c: c.get_model_metadata(model))

    def infer(self, url: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str) -> dict:
        import tritonclient.http as httpclient

        tensors = []
        for name, datatype, shape, array in (t.spec() for t in inputs):
            tensor = httpclient.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(array, binary_data=self.binary)
            tensors.append(tensor)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=self.binary) for n in outputs]
        result = self._call(url, lambda c: c.infer(model, tensors, outputs=wanted, request_id=request_id))
        response = result.get_response()
        return {
            "outputs": {
                o["name"]: worker.plain(result.as_numpy(o["name"]), o["datatype"])
                for o in response["outputs"]
            },
            "model_version": response.get("model_version"),
            "id": response.get("id"),
            "binary": any("binary_data_size" in (o.get("parameters") or {}) for o in response["outputs"]),
        }


def kserve_rest(protocol: str, fn: Any) -> Any:
    """``fn(client)`` with KServe's ``InferenceRESTClient`` speaking ``protocol``; an error status fails."""
    import httpx
    from kserve import InferenceRESTClient, RESTConfig

    async def run() -> Any:
        async with InferenceRESTClient(RESTConfig(protocol=protocol, retries=0)) as client:
            return await fn(client)

    try:
        return asyncio.run(run())
    except httpx.HTTPStatusError as exc:  # message: "<error>, '<status> <reason>' for url '<url>'"
        raise Failure(exc.response.status_code, str(exc).rsplit(", '", 1)[0]) from None


class KServeRest(Client):
    """KServe's own ``InferenceRESTClient`` (v2; its inputs default to the binary extension)."""

    name = "kserve.rest"
    ops = HEALTH | {"infer"}  # it has no metadata calls

    def _call(self, fn: Any) -> Any:
        return kserve_rest("v2", fn)

    def live(self, url: str) -> bool:
        return self._call(lambda c: c.is_server_live(url))

    def ready(self, url: str) -> bool:
        return self._call(lambda c: c.is_server_ready(url))

    def model_ready(self, url: str, model: str) -> bool:
        return self._call(lambda c: c.is_model_ready(url, model))

    def infer(self, url: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str) -> dict:
        from kserve import InferInput, InferRequest

        tensors = []
        for name, datatype, shape, array in (t.spec() for t in inputs):
            tensor = InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        request = InferRequest(model_name=model, infer_inputs=tensors, request_id=request_id)
        response = self._call(lambda c: c.infer(url, request, model_name=model))
        return kserve_reply(response)


def kserve_reply(response: Any) -> dict:
    """A KServe ``InferResponse`` as plain values."""
    return {
        "outputs": {o.name: worker.plain(o.as_numpy(), o.datatype) for o in response.outputs},
        "model_version": response.model_version,
        "id": response.id,
        "binary": None,  # the client hides how the outputs were encoded
    }


# ----------------------------------------------------------------------------------------------- gRPC
class TritonGrpc(Client):
    """NVIDIA's ``tritonclient.grpc`` (in a worker process): raw contents, or typed contents (its stub)."""

    protocol = "grpc"

    def __init__(self, raw: bool, executor: Executor | None = None) -> None:
        self.raw, self.executor = raw, executor
        self.name = f"tritonclient.grpc.{'raw' if raw else 'typed'}"
        # The health and metadata calls are the same client in both modes: only raw lists them.
        self.ops = ALL_OPS if raw else frozenset({"infer"})

    def _run(self, fn: Any, *args: Any) -> Any:
        assert self.executor is not None, "bound to the worker by the clients fixture"
        result = self.executor.submit(fn, *args).result(timeout=60)
        if result[0] == "error":
            raise Failure(result[1], result[2])
        return result[1]

    def live(self, target: str) -> bool:
        return self._run(worker.health, target, "live")

    def ready(self, target: str) -> bool:
        return self._run(worker.health, target, "ready")

    def model_ready(self, target: str, model: str) -> bool:
        return self._run(worker.health, target, "model_ready", model)

    def server_metadata(self, target: str) -> dict:
        return self._run(worker.metadata, target, None)

    def model_metadata(self, target: str, model: str) -> dict:
        return self._run(worker.metadata, target, model)

    def infer(
        self, target: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str
    ) -> dict:
        specs = [t.spec() for t in inputs]
        return self._run(worker.infer, target, model, specs, outputs, request_id, self.raw)


class KServeGrpc(Client):
    """KServe's own ``InferenceGRPCClient`` (typed contents)."""

    name = "kserve.grpc"
    protocol = "grpc"
    ops = HEALTH | {"infer"}

    def _call(self, target: str, fn: Any) -> Any:
        import grpc
        from kserve import InferenceGRPCClient

        async def run() -> Any:
            async with InferenceGRPCClient(target, retries=0) as client:
                return await fn(client)

        try:
            return asyncio.run(run())
        except grpc.RpcError as exc:
            raise Failure(exc.code().name, exc.details()) from None

    def live(self, target: str) -> bool:
        return self._call(target, lambda c: c.is_server_live())

    def ready(self, target: str) -> bool:
        return self._call(target, lambda c: c.is_server_ready())

    def model_ready(self, target: str, model: str) -> bool:
        return self._call(target, lambda c: c.is_model_ready(model))

    def infer(
        self, target: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str
    ) -> dict:
        from kserve import InferInput, InferRequest

        tensors = []
        for name, datatype, shape, array in (t.spec() for t in inputs):
            tensor = InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(array, binary_data=False)
            tensors.append(tensor)
        request = InferRequest(model_name=model, infer_inputs=tensors, request_id=request_id)
        return kserve_reply(self._call(target, lambda c: c.infer(request)))


class Reflection(Client):
    """A generic gRPC tool (as grpcurl): messages from server reflection alone, requests written as JSON."""

    name = "grpc.reflection.json"
    protocol = "grpc"

    def call(self, target: str, method: str, request: dict) -> dict:
        import grpc
        from google.protobuf import descriptor_pool, json_format, message_factory
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        with grpc.insecure_channel(target) as channel:
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            service = pool.FindServiceByName("inference.GRPCInferenceService")
            rpc = service.methods_by_name[method]
            request_type = message_factory.GetMessageClass(rpc.input_type)
            response_type = message_factory.GetMessageClass(rpc.output_type)
            stub = channel.unary_unary(
                f"/{service.full_name}/{method}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                reply = stub(json_format.ParseDict(request, request_type()), timeout=30)
            except grpc.RpcError as exc:
                raise Failure(exc.code().name, exc.details()) from None
            return json_format.MessageToDict(reply, preserving_proto_field_name=True)

    def live(self, target: str) -> bool:
        return self.call(target, "ServerLive", {}).get("live", False)

    def ready(self, target: str) -> bool:
        return self.call(target, "ServerReady", {}).get("ready", False)

    def model_ready(self, target: str, model: str) -> bool:
        return self.call(target, "ModelReady", {"name": model}).get("ready", False)

    def server_metadata(self, target: str) -> dict:
        return self.call(target, "ServerMetadata", {})

    def model_metadata(self, target: str, model: str) -> dict:
        return worker.metadata_shapes(self.call(target, "ModelMetadata", {"name": model}))

    def infer(
        self, target: str, model: str, inputs: list[Tensor], outputs: list[str], request_id: str
    ) -> dict:
        tensors = []
        for name, datatype, shape, array in (t.spec() for t in inputs):
            values = worker.plain(array, datatype)  # the JSON mapping: BYTES as base64
            if datatype == "BYTES":
                values = [base64.b64encode(v.encode()).decode() for v in values]
            contents = {worker.CONTENTS[datatype]: values}
            tensors.append({"name": name, "datatype": datatype, "shape": shape, "contents": contents})
        request = {"model_name": model, "id": request_id, "inputs": tensors}
        request["outputs"] = [{"name": n} for n in outputs]
        reply = self.call(target, "ModelInfer", request)
        return {
            "outputs": {
                o["name"]: worker.from_json_contents(o["datatype"], o.get("contents", {}))
                for o in reply["outputs"]
            },
            "model_version": reply.get("model_version"),
            "id": reply.get("id"),
            "binary": bool(reply.get("raw_output_contents")),
        }


def all_clients(executor: Executor | None = None) -> list[Client]:
    """Every client, in the order of the README's table (``executor``: the tritonclient.grpc worker)."""
    return [
        Curl(),
        TritonHttp(binary=False),
        TritonHttp(binary=True),
        KServeRest(),
        TritonGrpc(raw=True, executor=executor),
        TritonGrpc(raw=False, executor=executor),
        KServeGrpc(),
        Reflection(),
    ]
