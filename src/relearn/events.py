"""KServe payload-logger CloudEvents: the format relearn's servers emit and the drift detector accepts.

KServe's logger (``pkg/logger/worker.go``) posts CloudEvents v1.0 in *binary* mode: the attributes travel as
``ce-*`` HTTP headers and the body is the raw v1/v2 request or response JSON. A request and its response
share ``ce-id``. Extensions: ``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` (``default``
or ``canary``) and ``metadata`` (a JSON object as a string). This module has no third-party imports so the
drift detector's own environment (alibi-detect pins numpy<2) can use it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES = (REQUEST_TYPE, RESPONSE_TYPE)
SPEC_VERSION = "1.0"
EXTENSIONS = ("inferenceservicename", "namespace", "component", "endpoint", "metadata")
ENDPOINTS = ("default", "canary")


def ce_time(moment: datetime | float) -> str:
    """A ``time`` attribute as KServe writes it: RFC 3339 in UTC with ``Z`` (a datetime or epoch seconds)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def binary_headers(
    *,
    event_id: str,
    event_type: str,
    source: str,
    inference_service: str,
    namespace: str,
    component: str,
    endpoint: str = "default",
    metadata: Mapping[str, list[str]] | None = None,
    time: datetime | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The HTTP headers of one payload-logger event in binary mode, exactly as KServe sets them.

    Args:
        event_id: Shared by a request and its response (KServe uses the request id).
        event_type: :data:`REQUEST_TYPE` or :data:`RESPONSE_TYPE`.
        source: URI of the component that logged the payload.
        inference_service: Name of the InferenceService.
        namespace: Its namespace.
        component: ``predictor`` or ``transformer``.
        endpoint: ``default`` (stable) or ``canary``.
        metadata: Request headers KServe was told to forward (``metadataHeaders``), name -> values.
        time: When the event happened; now when omitted.
        content_type: Content type of the body (the raw v1/v2 JSON).

    Returns:
        Header name -> value, ready for an HTTP POST with the raw body.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type must be one of {EVENT_TYPES}, not {event_type!r}")
    return {
        "ce-specversion": SPEC_VERSION,
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": source,
        "ce-time": ce_time(time or datetime.now(UTC)),
        "ce-inferenceservicename": inference_service,
        "ce-namespace": namespace,
        "ce-component": component,
        "ce-endpoint": endpoint,
        "ce-metadata": json.dumps(dict(metadata or {}), separators=(",", ":")),
        "content-type": content_type,
    }
