"""Payload logging in KServe's logger format, for REST and gRPC alike, off the request path.

KServe's logger cannot decode gRPC, so both servers log every inference themselves: a request event and,
when the inference succeeded, a response event sharing its ``ce-id`` (binary-mode CloudEvents, headers
from :func:`relearn.events.binary_headers`, body the v2 JSON request or response). Events go through a
bounded queue drained by a few sender threads (KServe: 5 workers, queue 100, no retries); a full queue or
a failing sink drops the event and counts it in ``relearn_payload_log_dropped_total``. Prediction latency
does not depend on the sink: :meth:`PayloadLogger.log` never blocks.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE, binary_headers
from relearn.serving.metrics import LOG_DROPPED, LOG_QUEUE_DEPTH, LOG_SENT

log = logging.getLogger(__name__)

Body = dict[str, Any] | Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class LoggerConfig:
    """Where events go and the CloudEvents attributes that describe this server."""

    sink_url: str = ""
    inference_service: str = "relearn-fraud"
    namespace: str = "default"
    component: str = "predictor"
    endpoint: str = "default"
    source: str = "http://localhost:8080/"
    queue_size: int = 100
    workers: int = 5
    timeout_seconds: float = 2.0


class PayloadLogger:
    """A non-blocking CloudEvents emitter: ``log`` enqueues, sender threads POST, drops are counted."""

    def __init__(self, config: LoggerConfig) -> None:
        self.config = config
        self.enabled = bool(config.sink_url)
        self._queue: queue.Queue[tuple[str, str, datetime, Body] | None] = queue.Queue(config.queue_size)
        self._threads: list[threading.Thread] = []
        self._depth = LOG_QUEUE_DEPTH.labels(component=config.component)
        self._sent = LOG_SENT.labels(component=config.component)

    def start(self) -> None:
        """Start the sender threads (daemon: they never keep the process alive)."""
        if not self.enabled or self._threads:
            return
        for i in range(self.config.workers):
            thread = threading.Thread(target=self._run, name=f"payload-log-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the senders to finish what is queued, and wait a bounded time."""
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def log(self, event_id: str, event_type: str, body: Body) -> None:
        """Queue one event; ``body`` is the v2 JSON (or a function building it, run on a sender thread)."""
        if not self.enabled:
            return
        try:
            self._queue.put_nowait((event_id, event_type, datetime.now(UTC), body))
        except queue.Full:
            LOG_DROPPED.labels(component=self.config.component, reason="queue_full").inc()
        self._depth.set(self._queue.qsize())

    def log_request(self, event_id: str, body: Body) -> None:
        """Queue the request event of an inference."""
        self.log(event_id, REQUEST_TYPE, body)

    def log_response(self, event_id: str, body: Body) -> None:
        """Queue the response event of a successful inference."""
        self.log(event_id, RESPONSE_TYPE, body)

    def _run(self) -> None:
        cfg = self.config
        with httpx.Client(timeout=cfg.timeout_seconds) as client:
            while True:
                item = self._queue.get()
                self._depth.set(self._queue.qsize())
                if item is None:
                    return
                event_id, event_type, moment, body = item
                try:
                    payload = body() if callable(body) else body
                    headers = binary_headers(
                        event_id=event_id,
                        event_type=event_type,
                        source=cfg.source,
                        inference_service=cfg.inference_service,
                        namespace=cfg.namespace,
                        component=cfg.component,
                        endpoint=cfg.endpoint,
                        time=moment,
                    )
                    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
                    response = client.post(cfg.sink_url, content=data, headers=headers)
                    if response.status_code >= 300:
                        raise RuntimeError(f"sink answered {response.status_code}")
                    self._sent.inc()
                except Exception as exc:
                    LOG_DROPPED.labels(component=cfg.component, reason="sink_error").inc()
                    log.debug("payload log event dropped", extra={"error": str(exc)})
