"""The floor of the serving benchmark: servers that answer a v2 request without a model.

* ``rest``: a raw ASGI callable under uvicorn (no framework). ``POST /v2/models/<m>/infer`` reads the body
  and returns a fixed v2 JSON response; ``GET /v2/health/ready`` (and live) answer 200.
* ``grpc``: a bare ``grpc.aio`` servicer of ``inference.GRPCInferenceService`` built on KServe's generated
  protos; ``ModelInfer`` returns a fixed ``ModelInferResponse`` (ServerLive/Ready and ModelReady answer true).
* ``sink``: the same raw ASGI app used as a fast payload-log sink (answers 200 to any POST, counts events).

Usage: ``python -m benchmarks.serving_floor {rest,grpc,sink} --port P`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

HOST = "127.0.0.1"
MODEL = "floor"
_OUTPUT = {"name": "score", "datatype": "FP64", "shape": [1], "data": [0.5]}
INFER_BODY = json.dumps({"model_name": MODEL, "model_version": "0", "id": "", "outputs": [_OUTPUT]}).encode()
_JSON = [(b"content-type", b"application/json")]


def make_asgi(sink: bool = False) -> Any:
    """A raw ASGI app: fixed v2 answers (or, with ``sink``, 200 to any POST)."""
    counter = {"events": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the request body (the floor still reads what a real server would)
            message = await receive()
            more = message.get("more_body", False)
        path, method = scope["path"], scope["method"]
        if sink and method == "POST":
            counter["events"] += 1
            status, body = 200, b""
        elif method == "GET" and path.startswith(("/v2/health", "/v2/models/")):
            status, body = 200, b'{"ready": true, "live": true}'
        elif method == "GET" and path == "/sink/count":
            status, body = 200, json.dumps(counter).encode()
        elif method == "POST" and path.endswith("/infer"):
            status, body = 200, INFER_BODY
        else:
            status, body = 404, b'{"error": "not found"}'
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_asgi(port: int, sink: bool) -> None:
    import uvicorn

    uvicorn.run(make_asgi(sink), host=HOST, port=port, log_level="warning", access_log=False, lifespan="on")


async def serve_grpc(port: int) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    response = pb.ModelInferResponse(model_name=MODEL, model_version="0")
    out = response.outputs.add(name="score", datatype="FP64", shape=[1])
    out.contents.fp64_contents.append(0.5)

    class Floor(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ModelReadyResponse(ready=True)

        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            response.id = request.id
            return response

    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_floor", description=__doc__)
    parser.add_argument("kind", choices=["rest", "grpc", "sink"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        asyncio.run(serve_grpc(args.port))
    else:
        serve_asgi(args.port, sink=args.kind == "sink")


if __name__ == "__main__":
    main()
