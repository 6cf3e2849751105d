"""The drift detector's HTTP service: ``python -m relearn.monitoring.server --help``.

Routes: ``POST /`` (and any other path: the sink KServe's logger posts to), ``POST /labels``,
``GET /metrics``, ``GET /healthz``, ``GET /ready``, ``GET /status``, ``GET /v1/shadow`` (the shadow
comparison, :mod:`relearn.monitoring.comparison`) and ``GET /v1/backtest/labels|inputs`` (the rows
of a canary's backtest, :mod:`relearn.monitoring.served`): for the rollout controller, which cannot open the
log on the detector's ReadWriteOnce volume; ``GET /v1/experiments/rewards`` (a bandit's reward history, for
its update CronJob).

The sink is a bare ASGI handler in front of Starlette (no request/response objects, no routing, no
middleware): it reads the CloudEvent attributes from the raw headers (binary mode, KServe's), the JSON
envelope (structured mode) or a JSON array of envelopes (batched mode, all or nothing), checks each body (4xx
with the reason and the event's index), appends the raw bytes to the inference log and answers 202 once the
group commit is durable.
Feature extraction and pairing happen later, in the monitor thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_settings import CliApp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relearn.errors import InvalidRequest, RelearnError, Unavailable, rest_handler
from relearn.monitoring import roles, served, store
from relearn.monitoring.labels import parse_labels, store_labels
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor
from relearn.monitoring.payloads import Event, Rejected, http_events, loads, parse_headers, validate
from relearn.monitoring.settings import DriftSettings

NOT_SINK = frozenset({"/labels", "/metrics", "/healthz", "/ready", "/status"})
_ACCEPTED = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
_EMPTY = {"type": "http.response.body", "body": b""}

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN / inf (an undefined recall, say) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _numbers(params: Any, **defaults: float) -> list[Any]:
    """A query's numbers, typed as their defaults: finite, ``limit`` >= 1, the others but ``since`` >= 0.

    Raises:
        InvalidRequest: 400 ``bad_query`` naming the values (or what did not parse).
    """
    try:
        values = {name: type(default)(params.get(name, default)) for name, default in defaults.items()}
        floors = {"since": -math.inf, "limit": 1}
        if any(not math.isfinite(v) or v < floors.get(n, 0) for n, v in values.items()):
            raise ValueError(", ".join(f"{n} {v}" for n, v in values.items()))
    except (ValueError, OverflowError) as error:
        raise InvalidRequest(str(error), code="bad_query") from None
    return list(values.values())


def create_app(settings: DriftSettings) -> Any:
    """The ASGI app (sink fast path + Starlette for the rest); the log and monitor start with its lifespan."""
    metrics = Metrics()
    db = settings.data_dir / "inference-log.sqlite3"
    state: dict[str, Any] = {}
    labels_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        starter = roles.start_ingest if settings.role == "ingest" else roles.start_monitor
        stop = starter(settings, metrics, db, state)
        yield
        stop()

    def reject(error: Rejected) -> JSONResponse:
        metrics.rejected.labels(error.reason).inc()
        return JSONResponse(error.body(), status_code=error.status)

    ingested: dict[tuple[str, str], Any] = {}

    async def answer(send: Any, error: RelearnError) -> None:
        """The sink's error answer (it has no Starlette response): the error model's status and body."""
        metrics.rejected.labels(error.code or "error").inc()
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _event(part: tuple[Any, bytes], where: str) -> Event:
        headers, body = part
        try:
            ce_id, kind, track, when = parse_headers(headers, settings.shadow_service)
            if settings.validate_bodies:
                validate(kind, body)
        except Rejected as error:  # which event of a batch
            raise Rejected(error.reason, f"{where}{error}", error.status) from None
        return Event(ce_id, kind, track, when, body)

    async def sink(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            parts = http_events(headers.get("content-type", ""), headers, b"".join(chunks))
            events = [_event(part, f"event {i}: " if len(parts) > 1 else "") for i, part in enumerate(parts)]
        except Rejected as error:
            await answer(send, error)
            return
        try:  # a batch is all or nothing: every event is checked before any is stored, in one transaction
            await state["log"].append_many(events)
        except store.LogWriteError as error:
            await answer(send, Unavailable(str(error), code="storage_error"))
            return
        for event in events:
            counter = ingested.get((event.track, event.type))
            if counter is None:
                counter = metrics.ingested.labels(event.track, event.type.rsplit(".", 1)[-1])
                ingested[(event.track, event.type)] = counter
            counter.inc()
        metrics.ingest_latency.observe(time.perf_counter() - started)
        await send(_ACCEPTED)
        await send(_EMPTY)

    async def labels(request: Request) -> Response:
        """Chargebacks (JSON list: transaction_id, chargeback_timestamp) joined to the predictions: 202."""
        try:
            records = loads(await request.body(), "bad_labels", "labels body")
            parsed = parse_labels(records)
        except Rejected as error:
            return reject(error)

        def write() -> list[float]:
            with labels_lock:
                return store_labels(state["labels_conn"], parsed)

        lags = await asyncio.to_thread(write)
        metrics.labels.inc(len(parsed))
        for lag in lags:
            metrics.label_lag.observe(max(0.0, lag))
        state["monitor"].quality_due.set()
        return JSONResponse({"received": len(parsed), "joined": len(lags)}, status_code=202)

    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics of the detector."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        """Liveness."""
        return PlainTextResponse("ok")

    async def ready(request: Request) -> Response:
        """Readiness: 503 until a reference is loaded, then its version; an ingest replica: its shard."""
        if settings.role == "ingest":
            return JSONResponse({"ready": True, "role": "ingest", "shard": state["log"].shard})
        monitor: Monitor = state["monitor"]
        if monitor.tester is None:
            return JSONResponse({"ready": False, "error": monitor.error}, status_code=503)
        return JSONResponse({"ready": True, "reference": monitor.tester.version})

    async def status(request: Request) -> Response:
        """Windows, drift p-values, quality and estimates per track, as JSON (the demo polls it)."""
        monitor: Monitor = state["monitor"]
        return JSONResponse(
            _finite(
                {
                    "ready": monitor.tester is not None,
                    "processed_seq": monitor.cursor,
                    "windows": {t: r[-50:] for t, r in monitor.results.items()},
                    "open": {t: len(w.rows) for t, w in monitor.windows.items()},
                    "quality": monitor.quality,
                    "quality_updates": monitor.quality_updates,
                    "versions": [
                        {"track": track, "model_version": version, **q.__dict__}
                        for (track, version), q in monitor.version_quality.items()
                    ],
                    "error": monitor.error,
                }
            )
        )

    async def shadow(request: Request) -> Response:
        """``GET /v1/shadow?version=&threshold=&key=&limit=``: shadow vs stable on the same requests.

        ``version``: only that shadow version's predictions; ``threshold``: the decision threshold of the
        agreement (0.5); ``key``: ``ce_id`` or ``transaction_id`` (the join); ``limit``: newest events read.
        """
        from relearn.monitoring.comparison import comparison_of, events_from_log

        params = request.query_params
        try:
            threshold = float(params.get("threshold", 0.5))
            limit = int(params.get("limit", 50_000))
            key = params.get("key", "ce_id")
            if key not in ("ce_id", "transaction_id") or limit < 1:
                raise ValueError(f"bad key {key!r} or limit {limit}")
        except ValueError as error:
            raise InvalidRequest(str(error), code="bad_query") from None
        version = params.get("version")

        def compute() -> dict[str, Any]:
            events = events_from_log(db, limit=limit)
            return comparison_of(events, threshold, key=key, shadow_version=version).to_dict()

        result = await asyncio.to_thread(compute)
        return JSONResponse({**result, "threshold": threshold, "version": version})

    async def backtest(request: Request) -> Response:
        """The rows of a canary's backtest (:mod:`relearn.monitoring.served`), for the rollout controller.

        ``GET /v1/backtest/labels?since=&maturity_seconds=&limit=`` → ``{"labels": {id: 0|1}}``;
        ``GET /v1/backtest/inputs?since=&after=&limit=`` → ``{"inputs": {id: row}, "after": seq, "more": …}``.
        """
        query, what = request.query_params, request.url.path.rsplit("/", 1)[-1]
        limit = served.PAGE if what == "inputs" else 100_000
        since, maturity, limit, after = _numbers(query, since=0.0, maturity_seconds=0.0, limit=limit, after=0)

        def compute() -> dict[str, Any]:
            conn = served.open_read_only(db)
            try:
                if what == "labels":
                    return {"labels": served.labelled(conn, since, maturity, limit)}
                inputs, last, more = served.served_inputs(conn, since, after, min(limit, served.PAGE))
                return {"inputs": inputs, "after": last, "more": more}
            finally:
                conn.close()

        return JSONResponse(await asyncio.to_thread(compute))

    async def rewards(request: Request) -> Response:
        """A bandit's reward history (:func:`relearn.monitoring.served.rewards`), for its update CronJob.

        ``GET /v1/experiments/rewards?since=&after=&limit=`` → ``{"rows": [[version, score, time, label],
        ...], "after": row, "more": …}``: live predictions scored since ``since``, paged by log row.
        """
        since, limit, after = _numbers(request.query_params, since=0.0, limit=served.REWARDS_PAGE, after=0)

        def compute() -> dict[str, Any]:
            conn = served.open_read_only(db)
            try:
                rows, last, more = served.rewards(conn, since, after, min(limit, served.REWARDS_PAGE))
            finally:
                conn.close()
            return {"rows": rows, "after": last, "more": more}

        return JSONResponse(await asyncio.to_thread(compute))

    async def monitor_only(request: Request) -> Response:
        raise RelearnError(
            f"{request.url.path} is the monitor's (role all): an ingest replica only takes events, "
            "/metrics, /healthz and /ready",
            code="not_on_ingest_replica",
            status=404,
        )

    routes = [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
    ]
    monitor_routes = [
        Route("/labels", labels, methods=["POST"]),
        Route("/status", status, methods=["GET"]),
        Route("/v1/shadow", shadow, methods=["GET"]),
        Route("/v1/backtest/labels", backtest, methods=["GET"]),
        Route("/v1/backtest/inputs", backtest, methods=["GET"]),
        Route("/v1/experiments/rewards", rewards, methods=["GET"]),
    ]
    if settings.role == "ingest":
        monitor_routes = [Route(r.path, monitor_only, methods=r.methods) for r in monitor_routes]
    routes += monitor_routes

    async def http_error(request: Request, exc: Any) -> Response:
        """Unknown routes and methods answer JSON like every other error here, not plain text."""
        code = exc.detail.lower().replace(" ", "_")
        error = RelearnError(f"{exc.detail}: {request.method} {request.url.path}", code=code)
        return JSONResponse(error.body(), exc.status_code, headers=exc.headers)

    handlers = {HTTPException: http_error, RelearnError: rest_handler}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.metrics = metrics

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] not in NOT_SINK:
            await sink(scope, receive, send)
        else:
            await app(scope, receive, send)

    asgi.state = app.state  # type: ignore[attr-defined]
    return asgi  # type: ignore[return-value]


class ServeCommand(DriftSettings):
    """Run the drift detector (sink of KServe's payload logger). Options also read RELEARN_DRIFT_<OPTION>."""

    def cli_cmd(self) -> None:
        """Serve until interrupted."""
        import uvicorn

        from relearn.logs import configure_logging

        configure_logging(self.log_level)
        app = create_app(DriftSettings(**self.model_dump()))
        uvicorn.run(
            app,
            host=self.host,
            port=self.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # no per-request middleware in front of the sink
            server_header=False,
            date_header=False,
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m relearn.monitoring.server``: impossible settings exit naming them."""
    from pydantic import ValidationError

    try:
        CliApp.run(ServeCommand, cli_args=argv)
    except ValidationError as error:
        raise SystemExit(f"drift detector not started, invalid settings: {error}") from None


if __name__ == "__main__":
    main()
