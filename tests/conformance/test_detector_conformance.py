"""The drift detector's public routes: CloudEvents from the CloudEvents SDK (binary, structured, batched
content modes) on the sink, curl on the others. Test ids read ``<client>-<route>-detector``.

The sink takes one event per POST in binary mode (KServe's logger) or structured mode, or an array of
structured events in batched mode (the Python SDK has no batch helper: an array of its ``to_dict``), all or
nothing. Every error is JSON ``{"error": <reason>, "detail": <text>}``; a refused event (or a batch holding
one, whose index the detail names) changes no ingest counter.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary, to_dict, to_structured
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from conformance.cases import MODEL, model_arrays
from conformance.clients import Curl
from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.serving import tensors

pytestmark = pytest.mark.slow

MODES = ("binary", "structured", "batch")
BATCH = "application/cloudevents-batch+json"


def cell(test: str, params: dict) -> tuple[str, str, str]:
    """This module's tests in the conformance table: (client, route, endpoint)."""
    if "route" in params:
        return "curl", "/labels, /ready, /healthz, /status, /metrics; unknown route, method", "detector"
    return f"cloudevents.{params['mode']}", "CloudEvents sink (POST /)", "detector"


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """The detector's metrics: (sample name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def counters(url: str, prefix: str) -> dict:
    return {k: v for k, v in samples(url).items() if k[0].startswith(prefix) and k[0].endswith("_total")}


def pair(event_id: str) -> list[CloudEvent]:
    """A request and its response as KServe's logger sends them (shared ce-id, its extensions)."""
    numeric, categorical = model_arrays()
    ids = np.array([f"tx-{event_id}-{i}" for i in range(len(numeric))], dtype=object)
    request = tensors.v2_json(
        [
            (tensors.NUMERIC, "FP32", numeric.shape, numeric),
            (tensors.CATEGORICAL, "BYTES", categorical.shape, categorical),
            (tensors.TRANSACTION_ID, "BYTES", ids.shape, ids),
        ],
        event_id,
    )
    scores = np.array([0.2, 0.7], dtype=np.float32)
    response = tensors.v2_json(
        [
            (tensors.SCORE, "FP32", scores.shape, scores),
            (tensors.DECISION, "BOOL", scores.shape, scores > 0.5),
        ],
        event_id,
        key="outputs",
        model_name=MODEL,
        model_version="1",
    )
    attributes = {
        "id": event_id,
        "source": "http://localhost:9081/",
        "time": datetime.now(UTC).isoformat(),
        "inferenceservicename": MODEL,
        "namespace": "default",
        "component": "predictor",
        "endpoint": "default",
    }
    return [
        CloudEvent({**attributes, "type": kind}, body)
        for kind, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response))
    ]


def post(url: str, mode: str, *events: CloudEvent) -> httpx.Response:
    """One POST of the events: one event in binary or structured mode, or any number batched."""
    if mode == "batch":
        headers, body = {"content-type": BATCH}, json.dumps([to_dict(e) for e in events]).encode()
    else:
        (event,) = events
        headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return httpx.post(f"{url}/", headers=headers, content=body, timeout=10)


@pytest.mark.parametrize("mode", MODES, ids=[f"cloudevents.{m}-POST /-detector" for m in MODES])
def test_cloudevents_are_ingested(stack, mode):
    url = stack["detector"].url
    before = counters(url, "relearn_drift_events_ingested")
    events = pair(f"conformance-{mode}-{uuid.uuid4().hex[:8]}")
    for sent in [events] if mode == "batch" else [[e] for e in events]:
        answer = post(url, mode, *sent)
        assert (answer.status_code, answer.content) == (202, b"")
    after = counters(url, "relearn_drift_events_ingested")
    for kind in ("request", "response"):
        key = ("relearn_drift_events_ingested_total", (("track", "stable"), ("type", kind)))
        assert after[key] - before.get(key, 0.0) == 1.0


BAD_EVENTS = {
    # case: (attribute changes, data, reason)
    "unknown-type": ({"type": "com.example.other"}, {"instances": []}, "unknown_type"),
    "body-not-inference": ({}, {"hello": "world"}, "bad_body"),
    "unknown-endpoint": ({"endpoint": "blue"}, {"instances": []}, "unknown_endpoint"),
}


@pytest.mark.parametrize("case", BAD_EVENTS)
@pytest.mark.parametrize("mode", MODES, ids=[f"cloudevents.{m}-POST /-detector" for m in MODES])
def test_bad_cloudevents_are_refused(stack, mode, case):
    url = stack["detector"].url
    changes, data, reason = BAD_EVENTS[case]
    request = pair(f"bad-{uuid.uuid4().hex[:8]}")[0]
    attributes = {k: v for k, v in request.get_attributes().items() if k != "specversion"}
    before = counters(url, "relearn_drift_events_")
    bad = CloudEvent({**attributes, **changes}, data)
    answer = post(url, mode, *([pair(f"ok-{uuid.uuid4().hex[:8]}")[0], bad] if mode == "batch" else [bad]))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error", "detail"} and answer.json()["error"] == reason
    if mode == "batch":  # the bad event is named, and the good one before it is not stored either
        assert answer.json()["detail"].startswith("event 1: ")
    after = counters(url, "relearn_drift_events_")
    changed = {k[0]: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    assert changed == {"relearn_drift_events_rejected_total": 1.0}  # no ingest counter moved


CURL = {
    # route: (path, curl -d body, status, check of the JSON or text body)
    "POST /labels": (
        "/labels",
        json.dumps([{"transaction_id": "tx-conformance", "chargeback_timestamp": "2026-01-02T00:00:00Z"}]),
        202,
        lambda body: body["received"] == 1 and isinstance(body["joined"], int),
    ),
    "POST /labels bad": ("/labels", json.dumps({"not": "a list"}), 400, lambda b: b["error"] == "bad_labels"),
    "GET /ready": ("/ready", None, 200, lambda body: body["ready"] is True),
    "GET /healthz": ("/healthz", None, 200, lambda body: body == "ok"),
    "GET /status": ("/status", None, 200, lambda body: body["ready"] is True and "windows" in body),
    "GET /metrics": ("/metrics", None, 200, lambda text: "relearn_drift_detector_ready 1.0" in text),
    "GET /no-such-route": ("/no-such-route", None, 404, lambda body: body["error"] == "not_found"),
    "GET /labels": ("/labels", None, 405, lambda body: body["error"] == "method_not_allowed"),
}


@pytest.mark.parametrize("route", CURL, ids=[f"curl-{r}-detector" for r in CURL])
def test_routes_with_curl(stack, route):
    path, data, status, check = CURL[route]
    got_status, content_type, body = Curl().request(stack["detector"].url + path, data)
    assert got_status == status, body
    if status >= 400:
        assert content_type == "application/json" and set(body) == {"error", "detail"}
    assert check(body), body
