"""Payload logging in KServe's logger format, for REST and gRPC alike, off the request path.

KServe's logger cannot decode gRPC, so the predictor logs every inference itself: a request event and,
when the inference succeeded, a response event sharing its ``ce-id`` (binary-mode CloudEvents, headers
from :func:`relearn.events.binary_headers`, body the v2 JSON request or response). The transformer does not
log: it passes each row's ``transaction_id`` to the predictor as an extra input, so the predictor's pair
holds the model inputs, the ids the labels join on and the scores (two components logging one request
under one ``ce-id`` would cross in the detector's pairing). Events go through a
bounded queue (KServe: queue 100, no retries). The policy when the sink is slow or down is the user's
(``when_full``): ``drop`` (default) — a full queue or a failing sink drops the event and counts it in
``relearn_payload_log_dropped_total``, and prediction latency does not depend on the sink:
:meth:`PayloadLogger.log` never blocks and only enqueues references (the body, or a function building it);
``block`` — a request waits for room in the queue (up to ``block_seconds``) and failed POSTs are retried
with backoff, so predictions slow to the sink's pace rather than go unlogged.

The request path stays cheap: everything else (building the v2 JSON, the headers, the HTTP request) runs on
the sender thread, by default ONE (``workers``), which drains the queue (after ``linger_seconds``, unless a
batch is already waiting) and POSTs what it took over a kept-alive connection: up to ``batch_size`` events
per request in CloudEvents batched mode (an array of structured events, which relearn's drift detector
stores all or nothing), or with ``batch_size`` 1 one binary-mode event per request, as KServe's logger sends
them (any KServe sink takes those). The client is :class:`relearn.serving.sink_http.SinkConnection`, a
minimal HTTP/1.1 writer/reader on a plain socket.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from relearn.events import EVENT_TYPES, REQUEST_TYPE, RESPONSE_TYPE, binary_headers, ce_time
from relearn.routing import ROUTE_HEADER as ROUTE_HEADER  # re-exported: the router imports it from here
from relearn.routing import SHADOW_SUFFIX, track_of
from relearn.serving.metrics import LOG_DROPPED, LOG_QUEUE_DEPTH, LOG_SENT
from relearn.serving.sink_http import SinkConnection, SinkError

log = logging.getLogger(__name__)

Body = dict[str, Any] | Callable[[], dict[str, Any]]
Route = tuple[str | None, str | None]  # (inference_service, endpoint) overrides of one event
_Event = tuple[str, str, float, Body, str | None, str | None]
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
METRICS_SECONDS = 1.0  # the sender publishes its sent count and queue depth at most this often under load


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
    workers: int = 1
    timeout_seconds: float = 2.0
    batch_size: int = 64  # events per POST; 1: binary mode, one event per POST
    drain_seconds: float = 10.0  # on stop, how long the queued events may take to reach the sink
    when_full: str = "drop"  # or "block": wait for room (up to block_seconds), retry failed POSTs
    block_seconds: float = 30.0
    linger_seconds: float = 0.01  # after the first event, wait this long for more: one POST per burst


class PayloadLogger:
    """A non-blocking CloudEvents emitter: ``log`` enqueues, a sender thread POSTs, drops are counted."""

    def __init__(self, config: LoggerConfig) -> None:
        self.config = config
        self.enabled = bool(config.sink_url)
        # A deque, not a queue.Queue: the request path only appends (atomic, ~0.1 µs) and wakes the sender
        # when it sleeps; Queue's lock and Condition per put cost the event loop ~10 µs per event.
        self._items: deque[_Event] = deque()
        self._wake = threading.Event()  # set: events wait (or stop was asked)
        self._room = threading.Condition()  # block mode: log() waits here for the sender to make room
        self._stopping = False
        self._threads: list[threading.Thread] = []
        # Metric updates are mmap writes under a process-wide lock (KServe's multiprocess mode): the sender
        # adds up what it sent and publishes it at most every METRICS_SECONDS (idle or not) and at stop.
        self._unpublished, self._published = 0, 0.0
        self._count_lock = threading.Lock()  # workers > 1: the count is shared
        self._depth = LOG_QUEUE_DEPTH.labels(component=config.component)
        self._sent = LOG_SENT.labels(component=config.component)
        self._full = LOG_DROPPED.labels(component=config.component, reason="queue_full")
        self._failed = LOG_DROPPED.labels(component=config.component, reason="sink_error")
        self._block = config.when_full == "block"
        self._deadline = float("inf")  # block: failed POSTs are retried until stop()'s drain deadline
        self._templates: dict[Route, dict[str, Any]] = {}  # the constant attributes of each route's events

    def start(self) -> None:
        """Start the sender thread(s) (daemon: they never keep the process alive)."""
        if not self.enabled or self._threads:
            return
        for i in range(max(1, self.config.workers)):
            thread = threading.Thread(target=self._run, name=f"payload-log-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Send what is queued, then stop the senders; at most ``timeout`` (``drain_seconds``) in all.

        The predictor calls it on SIGTERM once it answers no more requests, so every event of an answered
        request is sent unless the sink is down or slower than the drain allows (what is left is logged).
        """
        deadline = time.monotonic() + (self.config.drain_seconds if timeout is None else timeout)
        self._deadline = deadline
        self._stopping = True
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("payload log not drained in time", extra={"events_left": len(self._items)})
        self._threads = []

    def log(self, event_id: str, event_type: str, body: Body, route: Route = (None, None)) -> None:
        """Queue one event; ``body`` is the v2 JSON (or a function building it, run on the sender thread).

        ``route`` overrides the configured ``(inference_service, endpoint)`` for this event (see
        :func:`event_route`).
        """
        if not self.enabled:
            return
        if event_type not in EVENT_TYPES:  # batches check it here, not per event in binary_headers
            raise ValueError(f"event_type must be one of {EVENT_TYPES}, not {event_type!r}")
        item = (event_id, event_type, time.time(), body, *route)
        if len(self._items) >= self.config.queue_size and not self._wait_for_room():
            self._full.inc()
            return
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def _wait_for_room(self) -> bool:
        """Block mode: wait (up to ``block_seconds``) for the sender to make room; drop: no room."""
        if not self._block:
            return False
        with self._room:  # backpressure: the request waits for the sender to make room
            return self._room.wait_for(
                lambda: len(self._items) < self.config.queue_size, self.config.block_seconds
            )

    def log_request(self, event_id: str, body: Body, route: Route = (None, None)) -> None:
        """Queue the request event of an inference."""
        self.log(event_id, REQUEST_TYPE, body, route)

    def log_response(self, event_id: str, body: Body, route: Route = (None, None)) -> None:
        """Queue the response event of a successful inference."""
        self.log(event_id, RESPONSE_TYPE, body, route)

    def _run(self) -> None:
        connection = SinkConnection(self.config.sink_url, self.config.timeout_seconds)
        most = max(64, self.config.batch_size)
        try:
            while True:
                if not self._wake.wait(METRICS_SECONDS):  # idle: the metrics catch up
                    self._publish(force=True)
                    continue
                if self.config.linger_seconds > 0 and not self._stopping and len(self._items) < most:
                    # Without it, a steady load wakes this thread and POSTs once per request or two: the
                    # wake-ups and POSTs cost the requests more CPU (and GIL) than the events themselves.
                    # A queue already holding a full batch does not wait: it must not fill meanwhile.
                    time.sleep(self.config.linger_seconds)
                if not self._stopping:  # stopping, it stays set: every sender sees the end
                    self._wake.clear()  # before taking: an event appended from here on sets it again
                items = []
                try:  # one wake-up for a burst (a kill -9 loses the queue + this batch)
                    while len(items) < most:
                        items.append(self._items.popleft())
                except IndexError:
                    pass
                if self._items:
                    self._wake.set()
                if self._block:
                    with self._room:
                        self._room.notify_all()
                size = max(1, self.config.batch_size)
                for i in range(0, len(items), size):
                    if size == 1:
                        self._send(connection, items[i])
                    else:
                        self._send_batch(connection, items[i : i + size])
                if self._stopping and not self._items:
                    self._publish(force=True)
                    return
                self._publish()
        finally:
            connection.close()

    def _publish(self, force: bool = False) -> None:
        """The sent count and queue depth to the metrics: at most every METRICS_SECONDS, or now (idle)."""
        now = time.monotonic()
        if force or now - self._published >= METRICS_SECONDS:
            self._published = now
            with self._count_lock:
                sent, self._unpublished = self._unpublished, 0
            if sent:
                self._sent.inc(sent)
            self._depth.set(len(self._items))

    def _headers(self, item: _Event) -> dict[str, str]:
        cfg = self.config
        event_id, event_type, moment, _, service, endpoint = item
        return binary_headers(
            event_id=event_id,
            event_type=event_type,
            source=cfg.source,
            inference_service=service or cfg.inference_service,
            namespace=cfg.namespace,
            component=cfg.component,
            endpoint=endpoint or cfg.endpoint,
            time=datetime.fromtimestamp(moment, UTC),
        )

    def _envelope(self, item: _Event) -> dict[str, Any]:
        """One structured event's attributes: the binary headers' (one definition), built once per route."""
        event_id, event_type, moment, _, service, endpoint = item
        template = self._templates.get((service, endpoint))
        if template is None:
            headers = self._headers(item)
            template = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
            template["datacontenttype"] = headers["content-type"]
            self._templates[service, endpoint] = template
        return {**template, "id": event_id, "type": event_type, "time": ce_time(moment)}

    def _send(self, connection: SinkConnection, item: _Event) -> None:
        """One event in binary mode (KServe's logger's format)."""
        try:
            payload = item[3]() if callable(item[3]) else item[3]
            data = _dumps(payload)
            self._post(connection, self._headers(item), data, 1)
        except Exception as exc:
            self._failed.inc()
            log.debug("payload log event dropped", extra={"error": str(exc)})

    def _send_batch(self, connection: SinkConnection, items: list[_Event]) -> None:
        """The events in one POST, CloudEvents batched mode: each a structured envelope, ``data`` its JSON."""
        envelopes = []
        for item in items:
            try:
                envelope = self._envelope(item)
                envelope["data"] = item[3]() if callable(item[3]) else item[3]
                envelopes.append(envelope)
            except Exception as exc:  # this event cannot be built: the others still go
                self._failed.inc()
                log.debug("payload log event dropped", extra={"error": str(exc)})
        if not envelopes:
            return
        try:
            data = _dumps(envelopes)
            self._post(connection, {"content-type": BATCH_CONTENT_TYPE}, data, len(envelopes))
        except Exception as exc:
            self._failed.inc(len(envelopes))
            log.debug("payload log batch dropped", extra={"error": str(exc), "events": len(envelopes)})

    def _post(self, connection: SinkConnection, headers: dict[str, str], data: bytes, events: int) -> None:
        """POST once (drop); block: again after each failure, backing off to 2 s, until the drain deadline.

        A 4xx is the sink refusing these events: sending them again cannot help, so it is not retried.
        """
        pause = 0.05
        while True:
            try:
                status = connection.post(headers, data)
                if status >= 300:
                    raise SinkError(f"sink answered {status}")
                with self._count_lock:  # published by _publish
                    self._unpublished += events
                return
            except Exception as exc:
                refused = isinstance(exc, SinkError) and str(exc).startswith("sink answered 4")
                if not self._block or refused or time.monotonic() + pause > self._deadline:
                    raise
                log.debug("payload log sink failed, retrying", extra={"error": str(exc), "events": events})
                connection.close()
                time.sleep(pause)
                pause = min(2.0, pause * 2)


def _dumps(value: Any) -> bytes:
    """Compact JSON by orjson (KServe's own dependency), numpy arrays included.

    Encoding is the sender's main cost: ~4x less CPU than ``json`` on 32-row events, and numpy arrays
    written straight from their buffers (float32 in its shortest form) avoid a Python float per element, so
    less of the GIL is taken from the requests. NaN or infinity refuses the event (orjson would write null,
    which the detector reads as a missing number).
    """
    data = orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in data and _non_finite(value):
        raise ValueError("an event holds NaN or infinity")
    return data


def _default(value: Any) -> Any:
    """What orjson cannot write itself: bytes (text), arrays it does not take (not C-contiguous, object)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot log a {type(value).__name__}")


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f" and not bool(np.isfinite(value).all())
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def event_route(headers: Mapping[str, str] | None, inference_service: str) -> Route:
    """``(inference_service, endpoint)`` of one inference's events, where the request says it.

    In a cluster each role has its own pods and logger settings: the shadow is an InferenceService of
    its own and the canary's logger says ``ce-endpoint: canary``. Locally one process per version plays
    every role in turn, so the request tells: a mirrored one (Envoy's ``-shadow`` host, see
    :func:`relearn.routing.track_of`) belongs to ``<inference_service>-shadow``, one the local
    router sent on its canary route (``x-relearn-route: canary``) to the canary endpoint.
    """
    headers = headers or {}
    if track_of(headers) == "mirror":
        return f"{inference_service}{SHADOW_SUFFIX}", None
    if headers.get(ROUTE_HEADER) == "canary":
        return None, "canary"
    return None, None


def payload_logger_for(settings: Any, component: str = "predictor") -> PayloadLogger:
    """The payload logger these (predictor) settings describe."""
    return PayloadLogger(
        LoggerConfig(
            sink_url=settings.log_sink_url,
            inference_service=settings.inference_service,
            namespace=settings.namespace,
            component=component,
            endpoint=settings.endpoint,
            source=f"http://{settings.host}:{settings.http_port}/",
            queue_size=settings.log_queue_size,
            workers=settings.log_workers,
            timeout_seconds=settings.log_timeout_seconds,
            batch_size=settings.log_batch_size,
            drain_seconds=settings.log_drain_seconds,
            when_full=settings.log_when_full,
            block_seconds=settings.log_block_seconds,
            linger_seconds=settings.log_linger_seconds,
        )
    )
