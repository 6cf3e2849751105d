"""Run a ``kserve.Model`` behind KServe's own REST app and gRPC servicer, bound to a chosen address.

KServe's ``ModelServer`` binds ``0.0.0.0`` / ``[::]`` unconditionally; this assembles the same pieces (its
FastAPI app with v1/v2 routes, ``/metrics`` and exception handlers, its ``InferenceServicer`` with its
exception-to-status interceptor) on ``settings.host`` and serves them through :mod:`relearn.listeners`
(SIGTERM drains both within ``grace_seconds``). With ``--workers`` > 1 it hands over to ``ModelServer``
itself (several uvicorn processes; all interfaces).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from relearn import listeners
from relearn.errors import InvalidRequest, NotFound, RelearnError, grpc_abort, rest_handler
from relearn.serving.config import CommonServingSettings

log = logging.getLogger(__name__)
GRPC_MAX_MESSAGE = 64 * 1024 * 1024


GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def strict_handlers(servicer: Any) -> Any:
    """KServe's servicer methods behind handlers that answer undecodable protobuf with INVALID_ARGUMENT.

    grpcio answers a request its deserializer cannot parse with INTERNAL; a malformed message is the
    client's error, so the handlers take raw bytes and parse them themselves.
    """
    import grpc
    from google.protobuf.message import DecodeError
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    def wrap(method: Any, request_type: Any, name: str) -> Any:
        async def handler(raw: bytes, context: Any) -> Any:
            try:
                request = request_type.FromString(raw)
            except DecodeError as exc:
                await grpc_abort(context, InvalidRequest(f"malformed {request_type.__name__}: {exc}"), name)
            return await method(request, context)

        return handler

    handlers = {}
    for name in GRPC_METHODS:
        request_type = getattr(pb, f"{name}Request")
        response_type = getattr(pb, f"{name}Response")
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            wrap(getattr(servicer, name), request_type, name),
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers)


class OpenInferenceJson:
    """ASGI middleware: v2 ``/infer`` bodies without the binary header and v1 form bodies are JSON.

    A v1 ``:predict`` body sent as a form (``curl -d``) or without a type is JSON too.

    The open inference protocol signals its binary extension by that header alone; KServe's REST data plane
    decides by content type instead, so tritonclient's JSON mode and ``curl -d`` (a form type) got a 400
    "received byte inputs". Without the header the request is handed on as ``application/json``. On v1,
    KServe hands a non-JSON type's bytes to the model unparsed (a 400 from ours); CloudEvents keep theirs.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on, typed as JSON when it is a v2 infer body without the binary header."""
        if scope["type"] == "http" and scope["path"].endswith(("/infer", ":predict")):
            headers = scope["headers"]
            if scope["path"].endswith("/infer"):
                as_json = not any(k.lower() == b"inference-header-content-length" for k, _ in headers)
            else:
                kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                as_json = kind.split(b";")[0].strip().lower() in (b"", b"application/x-www-form-urlencoded")
            if as_json:
                kept = [h for h in headers if h[0].lower() != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


async def bad_request(request: Any, exc: Any) -> Any:
    """A body FastAPI cannot validate: a 400 ``{"error": ...}`` naming the field (open inference protocol).

    FastAPI's default answer is a 422 that echoes the input, which fails on ``NaN`` (a 500).
    """
    first = (exc.errors() or [{}])[0]
    if first.get("type") == "json_invalid":  # its loc is (body, offset): say so rather than "1: ..."
        offset, reason = first["loc"][-1], first.get("ctx", {}).get("error", first.get("msg"))
        message = f"body: not valid JSON at position {offset}: {reason}"
    else:
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid request')}"
    return await rest_handler(request, InvalidRequest(message))


def as_relearn(error: BaseException) -> RelearnError | None:
    """The error model's view of an exception: a relearn error, or KServe's client errors mapped to one.

    KServe raises its ``InvalidInput`` (request decoding) and ``ModelNotFound`` itself; anything else is
    left to KServe's handlers.
    """
    from kserve.errors import InvalidInput, ModelNotFound

    if isinstance(error, RelearnError):
        return error
    if isinstance(error, InvalidInput):
        return InvalidRequest(str(error))
    if isinstance(error, ModelNotFound):
        return NotFound(str(error))
    return None


def _quiet_client_errors(app: Any) -> None:
    """Relearn's errors and KServe's client errors: after KServe's own handlers, which these replace."""
    from kserve.errors import InvalidInput, ModelNotFound

    async def kserve_error(request: Any, exc: Exception) -> Any:
        return await rest_handler(request, as_relearn(exc))

    app.add_exception_handler(RelearnError, rest_handler)
    app.add_exception_handler(InvalidInput, kserve_error)
    app.add_exception_handler(ModelNotFound, kserve_error)


def client_error_interceptor() -> Any:
    """KServe's exception-to-status interceptor, relearn's errors mapped by :func:`relearn.errors.grpc_abort`.

    KServe logs bad input and unknown models at ERROR with a traceback, and turns an abort a handler already
    made (:func:`strict_handlers`) into an ERROR "Internal server error" log; the abort passes through here.
    """
    import grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

    class ClientErrors(ExceptionToStatusInterceptor):
        async def handle_exception(self, ex: Exception, request: Any, context: Any, method: str) -> None:
            if isinstance(ex, grpc.aio.AbortError):
                raise ex
            error = as_relearn(ex)
            if error is None:
                await super().handle_exception(ex, request, context, method)
                return
            await grpc_abort(context, error, method)

    return ClientErrors()


def _prepare(app: Any) -> None:
    """Our middleware and handler on KServe's FastAPI app (once: it is a module-level object)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if not any(m.cls is OpenInferenceJson for m in app.user_middleware):
        app.add_middleware(OpenInferenceJson)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(HTTPException, http_error)


async def http_error(request: Any, exc: Any) -> Any:
    """An unknown route or method: ``{"error": ...}`` (open inference protocol), not ``{"detail": ...}``."""
    from starlette.responses import JSONResponse

    error = RelearnError(f"{exc.detail}: {request.method} {request.url.path}", status=exc.status_code)
    return JSONResponse(error.body(), error.status, headers=getattr(exc, "headers", None))


def serve(model: Any, settings: CommonServingSettings, payload_logger: Any = None) -> None:
    """Load ``model``, start its payload logger (if any) and serve it until SIGINT/SIGTERM.

    On SIGTERM the listeners drain within ``settings.grace_seconds``, then the payload logger sends what it
    has queued (its own ``log_drain_seconds``) before the process exits.
    """
    from relearn.logs import configure_logging

    configure_logging(settings.log_level)
    model.load()
    if payload_logger is None:
        run(model, settings)
        return
    payload_logger.start()
    run(model, settings, on_stop=payload_logger.stop)


def run(model: Any, settings: CommonServingSettings, on_stop: Callable[[], Any] | None = None) -> None:
    """Serve ``model`` (already loaded) on REST and gRPC until SIGINT/SIGTERM, then call ``on_stop``."""
    from grpc_reflection.v1alpha import reflection
    from kserve import ModelServer
    from kserve.errors import NoModelReady
    from kserve.model_server import app
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    _prepare(app)
    grace = settings.grace_seconds
    server = ModelServer(
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        workers=max(1, settings.workers),
        enable_latency_logging=False,
        grace_period=grace,
    )
    if settings.workers > 1:
        # Several uvicorn processes sharing one socket: relearn.listeners serves one process, so KServe's own
        # multi-process start does it (all interfaces, KServe's signal handling, the same grace time).
        server.start([model])
        return
    if not model.ready:
        raise NoModelReady([model])
    model.enable_latency_logging = False
    server.register_model(model)
    model.start()
    # KServe's public app builder: its middlewares, v1/v2 routes, /metrics and exception handlers on its
    # module-level FastAPI app; ours then replace the client-error handlers. Its uvicorn server is not used.
    RESTServer(
        "kserve.model_server:app", server.dataplane, server.model_repository_extension, 0
    ).create_application()
    _quiet_client_errors(app)

    async def stop() -> None:
        if on_stop is not None:
            await asyncio.to_thread(on_stop)

    async def serve() -> None:
        # The gRPC server belongs to the loop it is created on: build it inside asyncio.run.
        servicer = InferenceServicer(server.dataplane, server.model_repository_extension)
        grpc_server = listeners.grpc_listener(
            settings.host,
            settings.grpc_port,
            [strict_handlers(servicer)],
            interceptors=(client_error_interceptor(),),
            options=[
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ],
        )
        # Server reflection: grpcurl and other generic tools list and call the service without a proto file.
        reflection.enable_server_reflection((GRPC_SERVICE, reflection.SERVICE_NAME), grpc_server)
        log.info(
            "serving", extra={"model": model.name, "http": settings.http_port, "grpc": settings.grpc_port}
        )
        await listeners.serve(
            app,
            grpc_server,
            host=settings.host,
            rest_port=settings.http_port,
            grace_seconds=grace,
            cleanups=[stop],
            # KServe's REST settings: logs through relearn's JSON handler, keep-alive past load balancers'.
            log_config=None,
            log_level=None,
            timeout_keep_alive=65,
        )

    asyncio.run(serve())
