"""One way to run a REST (ASGI) and a gRPC listener side by side on one event loop and stop them cleanly.

SIGTERM (the kubelet's stop) and SIGINT make both listeners refuse new calls and finish the ones in flight
within ``grace_seconds``; then the owner's cleanups run. Base layer: imports nothing from relearn.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


def grpc_listener(host: str, port: int, handlers: Iterable[Any], **options: Any) -> Any:
    """An unstarted ``grpc.aio`` server bound to ``host:port`` with ``handlers`` (generic RPC handlers)."""
    import grpc

    server = grpc.aio.server(**options)
    server.add_generic_rpc_handlers(tuple(handlers))
    server.add_insecure_port(f"{host}:{port}")
    return server


async def serve(
    app: Any,
    grpc_server: Any,
    *,
    host: str,
    rest_port: int,
    grace_seconds: float,
    cleanups: Iterable[Callable[[], Awaitable[Any]]] = (),
) -> None:
    """Serve ``app`` on ``host:rest_port`` and start ``grpc_server`` until SIGINT/SIGTERM, then drain both."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=rest_port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=grace_seconds,
    )
    rest = uvicorn.Server(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn captures the signal while it serves and re-raises it once done; before and after that
        # window this handler asks it to exit, so a signal during start-up or the drain is not lost.
        signal.signal(sig, lambda *_: setattr(rest, "should_exit", True))
    await grpc_server.start()
    try:
        await rest.serve()
    finally:
        await grpc_server.stop(grace=grace_seconds)
        for cleanup in cleanups:
            await cleanup()
