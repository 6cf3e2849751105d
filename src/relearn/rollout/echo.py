"""A minimal KServe v2 server (REST + gRPC) that answers with its own name: the upstream of router tests.

``python -m relearn.rollout.echo --name stable --rest-port 9001 --grpc-port 9002`` serves
``/v2/health/ready``, ``/v2/models/{model}/infer`` and ``inference.GRPCInferenceService`` (ServerLive,
ServerReady, ModelInfer). Every inference answers one BYTES output ``server`` holding the name, and
``GET /count`` returns how many inference requests arrived per protocol (``rest``, ``grpc``) and how many of
them came marked as mirrored (``rest_mirror``, ``grpc_mirror``: :func:`relearn.routing.track_of`).
``--fail`` makes every inference fail (500 / INTERNAL): a broken shadow or canary.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from pathlib import Path
from typing import Any

from pydantic import Field

from relearn import commands, listeners
from relearn.commands import Command, command_config
from relearn.errors import RelearnError, grpc_abort, rest_handler

SERVICE = "inference.GRPCInferenceService"


@functools.cache
def v2_pb2() -> Any:
    """KServe's ``grpc_predict_v2_pb2``, loaded from its file (importing ``kserve`` itself takes seconds)."""
    spec = importlib.util.find_spec("kserve")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("kserve")
    path = Path(spec.origin).parent / "protocol" / "grpc" / "grpc_predict_v2_pb2.py"
    module_spec = importlib.util.spec_from_file_location("relearn_rollout_v2_pb2", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


async def serve(name: str, host: str, rest_port: int, grpc_port: int, fail: bool) -> None:
    """Serve until SIGINT/SIGTERM."""
    import grpc
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from relearn.routing import track_of

    pb = v2_pb2()
    counts = {"rest": 0, "grpc": 0, "rest_mirror": 0, "grpc_mirror": 0}

    async def ready(request: Request) -> JSONResponse:
        """v2 readiness and liveness."""
        return JSONResponse({"ready": True} if "ready" in request.url.path else {"live": True})

    async def infer(request: Request) -> JSONResponse:
        """v2 infer: answers with this server's name (or 500 when told to fail), counting mirrored calls."""
        counts["rest"] += 1
        counts["rest_mirror"] += track_of(request.headers) == "mirror"
        body = await request.json()
        if fail:
            raise RelearnError(f"{name} fails")  # 500 {"error": ...} through the error model's handler
        output = {"name": "server", "datatype": "BYTES", "shape": [1], "data": [name]}
        return JSONResponse(
            {"model_name": request.path_params["model"], "id": body.get("id", ""), "outputs": [output]}
        )

    async def count(request: Request) -> JSONResponse:
        """Calls received so far, REST and gRPC, direct and mirrored."""
        return JSONResponse(counts)

    app = Starlette(
        exception_handlers={RelearnError: rest_handler},
        routes=[
            Route("/v2/health/ready", ready),
            Route("/v2/health/live", ready),
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/count", count),
        ],
    )

    async def live(request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def model_infer(request: Any, context: Any) -> Any:
        counts["grpc"] += 1
        counts["grpc_mirror"] += track_of(dict(context.invocation_metadata() or ())) == "mirror"
        if fail:
            await grpc_abort(context, RelearnError(f"{name} fails"), "ModelInfer")
        out = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        tensor = out.outputs.add(name="server", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(name.encode())
        return out

    def unary(fn: Any, req: Any, resp: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )

    handlers = {
        "ServerLive": unary(live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelInfer": unary(model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
    grpc_server = listeners.grpc_listener(host, grpc_port, [generic])
    await listeners.serve(app, grpc_server, host=host, rest_port=rest_port, grace_seconds=1.0)


class EchoCommand(Command):
    """A stand-in model server (tests): answers v2 REST and gRPC with its own name."""

    model_config = command_config("python -m relearn.rollout.echo", "RELEARN_ECHO_")

    name: str = Field(description="The name every answer carries.")
    host: str = Field("127.0.0.1", description="Listen address.")
    rest_port: int = Field(ge=0, le=65535, description="v2 REST port.")
    grpc_port: int = Field(ge=0, le=65535, description="v2 gRPC port.")
    fail: bool = Field(False, description="Every inference fails (500 / INTERNAL).")

    def cli_cmd(self) -> None:
        """Serve until interrupted."""
        self.start_logging()
        asyncio.run(serve(self.name, self.host, self.rest_port, self.grpc_port, self.fail))


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.rollout.echo``."""
    commands.run(EchoCommand, argv, "echo server")


if __name__ == "__main__":
    main()
