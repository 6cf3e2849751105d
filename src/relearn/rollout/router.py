"""Local router: stable/canary split and shadow mirror for v2 REST and v2 gRPC.

The same semantics as KServe + Istio in a cluster:

* each request goes to the canary with probability ``canary_percent`` / 100, else to the stable version
  (Knative splits revisions by weight, per request);
* independently, a share ``mirror_percent`` / 100 of the requests is also sent to the shadow, fire and
  forget: the mirror's response is discarded and its failure or slowness never reaches the client
  (Istio ``mirror`` + ``mirrorPercentage``). Like Envoy, the router inserts ``-shadow`` into the mirrored
  Host (``host:port`` → ``host-shadow:port``); gRPC mirrors carry that authority as ``host`` metadata
  (Python gRPC servers do not expose ``:authority``), so the servers count mirrored requests apart
  (:func:`relearn.routing.track_of`);
* a route whose upstream cannot be reached answers 503 (REST) / UNAVAILABLE (gRPC), as Envoy does;
* a request marked ``x-relearn-arm`` (an A/B experiment's arm, see :mod:`relearn.experiments.routing`)
  goes to that arm's model version on route ``experiment/<arm>``.

REST is proxied by a Starlette app (httpx to the upstreams); gRPC by a generic ``grpc.aio`` handler that
forwards every unary method as raw bytes (all methods of ``inference.GRPCInferenceService`` are unary), so
request and response messages, metadata and status codes pass through unchanged.

The routing table lives in a JSON state file that
:class:`~relearn.rollout.local_backend.LocalBackend` writes atomically and the router re-reads whenever
it changes, so ``kubectl relearn --backend local`` and the controller change the weights
of a running router without restarting it::

    kubectl relearn --backend local register 1 --rest http://127.0.0.1:8082 --grpc 127.0.0.1:8083
    python -m relearn.rollout.router   # state <RELEARN_HOME>/rollout/state.json, REST 8084, gRPC 8085
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path
from typing import Any

from pydantic import Field

from relearn import commands, listeners
from relearn.commands import Command, command_config
from relearn.errors import RelearnError, Unavailable
from relearn.rollout.local_backend import Endpoint, RouterState
from relearn.routing import ARM_HEADER, ROUTE_HEADER, model_version, shadow_host

log = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
MAX_MIRRORS_IN_FLIGHT = 64
# The only streaming methods behind the router: server reflection (grpcurl, grpcui), one bidi stream of
# several requests. Every other method is unary and forwarded as such.
STREAMING = frozenset(
    f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo" for v in ("v1alpha", "v1")
)


# ----------------------------------------------------------------------------------------------- router
class Router:
    """Picks routes from the (re-read on change) state file and keeps mirror tasks bounded.

    Args:
        state_path: The state file written by :class:`LocalBackend`.
        seed: Seed of the route choices (tests); None for a random seed.
        mark_routes: Tell upstreams the route in ``x-relearn-route`` (locally one predictor can play stable
            and canary in turn); False routes as Knative does, unmarked (the cluster rehearsal).
    """

    def __init__(self, state_path: Path, seed: int | None = None, mark_routes: bool = True) -> None:
        self.path = Path(state_path)
        self.mark_routes = mark_routes
        self.rng = random.Random(seed)
        self._stamp: tuple[int, int] | None = None
        self.state = RouterState()
        self.mirrors: set[asyncio.Task[Any]] = set()
        self.mirrors_dropped = 0

    def refresh(self) -> RouterState:
        """Re-read the state file when its mtime or size changed (one stat per request)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self.state
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self.state = RouterState.load(self.path)
                self._stamp = stamp
            except (ValueError, TypeError) as exc:  # keep the last good table
                log.warning("unreadable router state", extra={"error": str(exc)})
        return self.state

    def choose(self, arm: str | None = None) -> tuple[str, Endpoint | None, Endpoint | None]:
        """(route name, primary endpoint, mirror endpoint or None) for one request.

        A request of an experiment (``arm``, assigned by the transformer) goes to the arm's model version,
        never to a random route: its card must see one arm only.
        """
        s = self.refresh()
        if arm:
            route, version = f"experiment/{arm}", model_version(arm)
        elif s.canary and self.rng.random() * 100 < s.canary_percent:
            route, version = "canary", s.canary
        else:
            route, version = "stable", s.stable
        mirror = None
        if s.shadow and s.mirror_percent > 0 and self.rng.random() * 100 < s.mirror_percent:
            mirror = s.endpoints.get(s.shadow)
        return route, s.endpoints.get(version) if version else None, mirror

    def mirror(self, coro: Any) -> None:
        """Fire and forget; drop the mirror (never the request) when too many are in flight."""
        if len(self.mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            self.mirrors_dropped += 1
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)


def rest_app(router: Router, timeout: float = 30.0) -> Any:
    """The Starlette app proxying every path and method to the chosen upstream."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=256))

    def refuse(error: RelearnError, route: str) -> Response:
        """The router's own failure: the error model's status and body, with the route that failed.

        Not logged per request (a proxy's refusals are counted by its callers, as Envoy's are).
        """
        return JSONResponse(error.body(), status_code=error.status, headers={ROUTE_HEADER: route})

    async def _send_mirror(url: str, method: str, headers: dict[str, str], body: bytes) -> None:
        with contextlib.suppress(Exception):  # the mirror's outcome is discarded, as Istio does
            await client.request(method, url, headers=headers, content=body)

    async def proxy(request: Request) -> Response:
        """Any path and method to the chosen upstream (stable, canary or an experiment's arm); mirrored."""
        route, primary, mirror = router.choose(request.headers.get(ARM_HEADER))
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if mirror is not None and mirror.rest:
            host = request.headers.get("host", "")
            shadow_headers = {**headers, "host": shadow_host(host)} if host else headers
            router.mirror(_send_mirror(mirror.rest + target, request.method, shadow_headers, body))
        if primary is None or not primary.rest:
            return refuse(Unavailable(f"no healthy upstream for route {route}"), route)
        try:
            # The route travels upstream too: locally one predictor plays stable and canary in turn, and
            # tags its payload-logger events by the route (relearn.serving.payload_log.event_route).
            routed = {**headers, ROUTE_HEADER: route}
            resp = await client.request(request.method, primary.rest + target, headers=routed, content=body)
        except httpx.HTTPError as exc:  # the route's own failure: say which route, as for its answers
            return refuse(Unavailable(f"upstream {route}: {exc!r}"), route)
        out = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"
        }
        out[ROUTE_HEADER] = route
        return Response(resp.content, status_code=resp.status_code, headers=out)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", proxy, methods=methods)])
    app.state.client = client
    return app


def grpc_handler(router: Router, timeout: float = 30.0) -> Any:
    """A generic gRPC handler forwarding every unary method as raw bytes."""
    import grpc

    channels: dict[str, Any] = {}

    async def abort(context: Any, error: RelearnError) -> None:
        """The router's own failure: the error model's gRPC code and message (not logged, as over REST)."""
        await context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))

    def channel(target: str) -> Any:
        if target not in channels:
            channels[target] = grpc.aio.insecure_channel(target)
        return channels[target]

    async def _send_mirror(target: str, method: str, request: bytes, metadata: Any) -> None:
        with contextlib.suppress(Exception):
            await channel(target).unary_unary(method)(request, metadata=metadata, timeout=timeout)

    def forwarded(context: Any) -> tuple[tuple[str, str], ...]:
        return tuple(
            (k, v)
            for k, v in (context.invocation_metadata() or ())
            if not k.startswith((":", "grpc-")) and k != "user-agent"
        )

    def stream(method: str) -> Any:
        """A bidi stream relayed message by message to the stable version (no canary draw, no mirror)."""

        async def call(requests: Any, context: Any) -> Any:
            stable = router.refresh()
            primary = stable.endpoints.get(stable.stable) if stable.stable else None
            if primary is None or not primary.grpc:
                await abort(context, Unavailable("no healthy upstream for route stable"))
            upstream = channel(primary.grpc).stream_stream(method)(requests, metadata=forwarded(context))
            try:
                async for response in upstream:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return grpc.stream_stream_rpc_method_handler(call)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            method = details.method
            if method in STREAMING:
                return stream(method)

            async def call(request: bytes, context: Any) -> bytes:
                metadata = forwarded(context)
                route, primary, mirror = router.choose(dict(metadata).get(ARM_HEADER))
                if mirror is not None and mirror.grpc:
                    marked = (*(m for m in metadata if m[0] != "host"), ("host", shadow_host(mirror.grpc)))
                    router.mirror(_send_mirror(mirror.grpc, method, request, marked))
                if primary is None or not primary.grpc:
                    context.set_trailing_metadata(((ROUTE_HEADER, route),))
                    await abort(context, Unavailable(f"no healthy upstream for route {route}"))
                marks = ((ROUTE_HEADER, route),) if router.mark_routes else ()
                try:
                    response, unary = await _with_call(
                        channel(primary.grpc).unary_unary(method), request, (*metadata, *marks)
                    )
                except grpc.aio.AioRpcError as exc:
                    context.set_trailing_metadata((*(exc.trailing_metadata() or ()), (ROUTE_HEADER, route)))
                    await context.abort(exc.code(), exc.details() or "")
                context.set_trailing_metadata(
                    (*(await unary.trailing_metadata() or ()), (ROUTE_HEADER, route))
                )
                return response

            return grpc.unary_unary_rpc_method_handler(call)

    async def _with_call(stub: Any, request: bytes, metadata: Any) -> tuple[bytes, Any]:
        unary = stub(request, metadata=metadata, timeout=timeout)
        return await unary, unary

    handler = Handler()
    handler.channels = channels  # type: ignore[attr-defined]
    return handler


async def serve(
    state_path: Path,
    host: str,
    rest_port: int,
    grpc_port: int,
    seed: int | None = None,
    grace_seconds: float = 1.0,
) -> None:
    """Run the REST and gRPC listeners until SIGINT/SIGTERM."""
    router = Router(state_path, seed=seed)
    app = rest_app(router)
    handler = grpc_handler(router)

    async def close() -> None:
        for task in list(router.mirrors):
            task.cancel()
        await app.state.client.aclose()
        for ch in handler.channels.values():
            await ch.close()

    log.info("router listening", extra={"rest": rest_port, "grpc": grpc_port})
    grpc_server = listeners.grpc_listener(host, grpc_port, [handler])
    await listeners.serve(
        app, grpc_server, host=host, rest_port=rest_port, grace_seconds=grace_seconds, cleanups=[close]
    )


class RouterCommand(Command):
    """The local rollout router: v2 REST and gRPC, split as `kubectl relearn --backend local` says.

    Every option is also an environment variable RELEARN_ROUTER_<OPTION>.
    """

    model_config = command_config("python -m relearn.rollout.router", "RELEARN_ROUTER_")

    state: Path | None = Field(
        None,
        description="State file that `kubectl relearn --backend local` writes (default: "
        "<RELEARN_HOME>/rollout/state.json, as there).",
    )
    host: str = Field("127.0.0.1", description="Listen address (loopback).")
    rest_port: int = Field(8084, ge=0, le=65535, description="v2 REST port.")
    grpc_port: int = Field(8085, ge=0, le=65535, description="v2 gRPC port.")
    seed: int | None = Field(None, description="Seed of the route choices (tests).")
    grace_seconds: float = Field(1.0, ge=0, description="Time calls in flight get to finish on SIGTERM.")

    def cli_cmd(self) -> None:
        """Route until interrupted."""
        from relearn.rollout.audit import rollout_dir

        self.start_logging()
        state = self.state or rollout_dir() / "state.json"
        asyncio.run(serve(state, self.host, self.rest_port, self.grpc_port, self.seed, self.grace_seconds))


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.rollout.router``."""
    commands.run(RouterCommand, argv, "router")


if __name__ == "__main__":
    main()
