"""The drift detector's HTTP service: ``python -m relearn.monitoring.server --help``.

Routes: ``POST /`` (and any other path: the sink KServe's logger posts to), ``POST /labels``,
``GET /metrics``, ``GET /healthz``, ``GET /ready``, ``GET /status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_settings import CliApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relearn.monitoring import store
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.labels import parse_labels, store_labels
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor
from relearn.monitoring.payloads import Event, Rejected, parse_headers, validate
from relearn.monitoring.settings import DriftSettings

log = logging.getLogger(__name__)


def _retrain(settings: DriftSettings) -> Any:
    if settings.trigger_mode == "local":
        from relearn.monitoring.trigger import run_local

        return lambda data: run_local(settings.local_command)
    if settings.trigger_mode == "cluster":
        from relearn.monitoring.trigger import submit_kfp_run

        return lambda data: submit_kfp_run(settings.kfp_host, settings.kfp_package)
    return None


def create_app(settings: DriftSettings) -> Starlette:
    """The ASGI app; the log and the monitor start with the app's lifespan."""
    metrics = Metrics()
    db = settings.data_dir / "inference-log.sqlite3"
    state: dict[str, Any] = {}
    labels_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        state["log"] = store.EventLog(
            db, settings.sqlite_synchronous, settings.commit_wait_ms, settings.max_batch
        )
        state["labels_conn"] = store.connect(db, settings.sqlite_synchronous)
        alerter = Alerter(settings.cooldown_s, settings.webhook_url, _retrain(settings))
        state["monitor"] = Monitor(settings, metrics, alerter)
        state["monitor"].start()
        yield
        state["monitor"].stop()
        state["log"].close()

    def reject(error: Rejected) -> JSONResponse:
        metrics.rejected.labels(error.reason).inc()
        return JSONResponse({"error": error.reason, "detail": str(error)}, status_code=error.status)

    async def sink(request: Request) -> Response:
        started = time.perf_counter()
        try:
            ce_id, kind, track, when = parse_headers(request.headers, settings.shadow_service)
            body = await request.body()
            validate(kind, body)
        except Rejected as error:
            return reject(error)
        try:
            await state["log"].append(Event(ce_id, kind, track, when, body))
        except sqlite3.Error as error:
            metrics.rejected.labels("storage_error").inc()
            return JSONResponse({"error": "storage_error", "detail": str(error)}, status_code=503)
        metrics.ingested.labels(track, kind.rsplit(".", 1)[-1]).inc()
        metrics.ingest_latency.observe(time.perf_counter() - started)
        return Response(status_code=202)

    async def labels(request: Request) -> Response:
        try:
            try:
                records = json.loads(await request.body())
            except ValueError as error:
                raise Rejected("bad_labels", f"labels body is not JSON: {error}") from None
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
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def ready(request: Request) -> Response:
        monitor: Monitor = state["monitor"]
        if monitor.tester is None:
            return JSONResponse({"ready": False, "error": monitor.error}, status_code=503)
        return JSONResponse({"ready": True, "reference": monitor.tester.version})

    async def status(request: Request) -> Response:
        monitor: Monitor = state["monitor"]
        return JSONResponse(
            {
                "ready": monitor.tester is not None,
                "processed_seq": monitor.cursor,
                "windows": {t: r[-50:] for t, r in monitor.results.items()},
                "open": {t: len(w.rows) for t, w in monitor.windows.items()},
                "quality": monitor.quality,
                "error": monitor.error,
            }
        )

    routes = [
        Route("/labels", labels, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/{path:path}", sink, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


class ServeCommand(DriftSettings):
    """Run the drift detector (sink of KServe's payload logger). Options also read RELEARN_DRIFT_<OPTION>."""

    def cli_cmd(self) -> None:
        """Serve until interrupted."""
        import uvicorn

        from relearn.logs import configure_logging

        configure_logging(self.log_level)
        app = create_app(DriftSettings(**self.model_dump()))
        uvicorn.run(app, host=self.host, port=self.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m relearn.monitoring.server``."""
    CliApp.run(ServeCommand, cli_args=argv)


if __name__ == "__main__":
    main()
