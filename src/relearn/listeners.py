"""One way to run a REST (ASGI) and a gRPC listener side by side on one event loop and stop them cleanly.

SIGTERM (the kubelet's stop) and SIGINT make both listeners refuse new calls at once and finish the ones in
flight within ``grace_seconds``; then the owner's cleanups run. Used by the model servers, the router and
the echo stand-in. Base layer: imports nothing from relearn.
"""

from __future__ import annotations

import asyncio
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
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` on ``host:rest_port`` and start ``grpc_server`` until SIGINT/SIGTERM, then drain both.

    ``uvicorn_options`` override the REST listener's ``uvicorn.Config`` defaults (quiet logs, no lifespan).
    """
    import uvicorn

    options = {"log_level": "warning", "lifespan": "off", **uvicorn_options}
    config = uvicorn.Config(
        app, host=host, port=rest_port, timeout_graceful_shutdown=grace_seconds, **options
    )
    rest = uvicorn.Server(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn captures the signal while it serves and re-raises it once done; before and after that
        # window this handler asks it to exit, so a signal during start-up or the drain is not lost.
        signal.signal(sig, lambda *_: setattr(rest, "should_exit", True))
    await grpc_server.start()
    grpc_drain = asyncio.create_task(_stop_when_exiting(rest, grpc_server, grace_seconds))
    try:
        await rest.serve()
    finally:
        rest.should_exit = True
        await grpc_drain
        for cleanup in cleanups:
            await cleanup()


async def _stop_when_exiting(rest: Any, grpc_server: Any, grace_seconds: float) -> None:
    """Stop ``grpc_server`` once ``rest`` is asked to exit: both drain together, not one after the other.

    uvicorn has no stop callback; it polls ``should_exit`` every 0.1 s itself, so this does the same.
    """
    while not rest.should_exit:
        await asyncio.sleep(0.1)
    await grpc_server.stop(grace=grace_seconds)
