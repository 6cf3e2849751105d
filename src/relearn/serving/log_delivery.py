"""Delivering payload-log events to the sink: building them, encoding them, POSTing them.

:class:`Delivery` turns the items :class:`relearn.serving.payload_log.PayloadLogger` queued into KServe-format
CloudEvents and POSTs them (batched mode, or one binary-mode event per POST) on the logger's sender thread;
every outcome goes to ``count(sent, failed)``, the logger's Prometheus counters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from relearn.events import binary_headers
from relearn.serving.sink_http import SinkConnection, SinkError

log = logging.getLogger("relearn.serving.payload_log")

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class Delivery:
    """Builds and POSTs events; ``count(sent, failed)`` hears every outcome.

    ``deadline`` (monotonic seconds) bounds the retries of the ``block`` policy: infinite until the server
    stops, then its drain deadline.
    """

    def __init__(self, config: Any, count: Callable[[int, int], None]) -> None:
        self.config = config
        self.count = count
        self.block = config.when_full == "block"
        self.deadline = float("inf")
        self.connection = SinkConnection(config.sink_url, config.timeout_seconds)

    def deliver(self, items: list[tuple]) -> None:
        """POST these items: ``batch_size`` per POST (1: binary mode, KServe's)."""
        size = max(1, self.config.batch_size)
        for i in range(0, len(items), size):
            if size == 1:
                self._send(items[i])
            else:
                self._send_batch(items[i : i + size])

    def close(self) -> None:
        """Close the connection to the sink."""
        self.connection.close()

    def _headers(self, item: tuple) -> dict[str, str]:
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

    def _send(self, item: tuple) -> None:
        """One event in binary mode (KServe's logger's format)."""
        try:
            payload = item[3]() if callable(item[3]) else item[3]
            self._post(self._headers(item), dumps(payload), 1)
        except Exception as exc:
            self.count(0, 1)
            log.debug("payload log event dropped", extra={"error": str(exc)})

    def _send_batch(self, items: list[tuple]) -> None:
        """The events in one POST, CloudEvents batched mode: each a structured envelope, ``data`` its JSON."""
        envelopes = []
        for item in items:
            try:
                headers = self._headers(item)
                envelope: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
                envelope["datacontenttype"] = headers["content-type"]
                envelope["data"] = item[3]() if callable(item[3]) else item[3]
                envelopes.append(envelope)
            except Exception as exc:  # this event cannot be built: the others still go
                self.count(0, 1)
                log.debug("payload log event dropped", extra={"error": str(exc)})
        if not envelopes:
            return
        try:
            self._post({"content-type": BATCH_CONTENT_TYPE}, dumps(envelopes), len(envelopes))
        except Exception as exc:
            self.count(0, len(envelopes))
            log.debug("payload log batch dropped", extra={"error": str(exc), "events": len(envelopes)})

    def _post(self, headers: dict[str, str], data: bytes, events: int) -> None:
        """POST once (drop); block: again after each failure, backing off to 2 s, until the deadline.

        A 4xx is the sink refusing these events: sending them again cannot help, so it is not retried.
        """
        pause = 0.05
        while True:
            try:
                status = self.connection.post(headers, data)
                if status >= 300:
                    raise SinkError(f"sink answered {status}")
                self.count(events, 0)
                return
            except Exception as exc:
                refused = isinstance(exc, SinkError) and str(exc).startswith("sink answered 4")
                if not self.block or refused or time.monotonic() + pause > self.deadline:
                    raise
                log.debug("payload log sink failed, retrying", extra={"error": str(exc), "events": events})
                self.connection.close()
                time.sleep(pause)
                pause = min(2.0, pause * 2)


def dumps(value: Any) -> bytes:
    """Compact JSON by orjson (KServe's own dependency): ~4x less CPU than ``json`` on 32-row events.

    NaN or infinity refuses the event (orjson would write null, which the detector reads as a missing
    number).
    """
    data = orjson.dumps(value)
    if b"null" in data and _non_finite(value):
        raise ValueError("an event holds NaN or infinity")
    return data


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False
