"""Fuzz the drift detector: the CloudEvents sink (binary mode, any path) and POST /labels."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st

from fuzz.fuzz_checks import JSON, V1
from fuzz.fuzz_harness import Endpoint, Rest, fuzz
from fuzz.fuzz_stack import scrape, total
from fuzz.fuzz_strategies import BATCH, ce_headers, cloud_event_batches, cloud_event_bodies, encoded, labels
from relearn.events import REQUEST_TYPE
from relearn.features.spec import MODEL_INPUTS

pytestmark = pytest.mark.slow

# Defects the fuzz found, fixed, kept as cases of their own (test_found_defects_are_client_errors): JSON
# nested deeper than Python's recursion limit, a v2 request event of zero rows, a label time whose UTC offset
# has more digits than a C int holds (each was a 500).
EMPTY_V2 = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [0], "data": []}]}'
LABEL_HUGE_OFFSET = (
    b'[{"transaction_id": "a", "chargeback_timestamp": "2026-01-01T00:00:00+9999999999999999999:00"}]'
)


@pytest.fixture(scope="module")
def rest(fuzz_stack):
    client = Rest(fuzz_stack.detector.url)
    yield client
    client.close()


def endpoint(stack, name: str, counter: str, healthy) -> Endpoint:
    """One of the detector's counters, which moves by the units of the accepted requests."""
    return Endpoint(
        name,
        [stack.detector.log_path],
        lambda: {counter: total(scrape(stack.detector.url), counter)},
        lambda tally: {counter: float(tally.units)},
        healthy,
    )


def event_headers() -> dict[str, str]:
    """A request event's headers as KServe's payload logger sends them."""
    return {
        **JSON,
        "ce-id": str(uuid.uuid4()),
        "ce-type": REQUEST_TYPE,
        "ce-source": "http://localhost:9081/",
        "ce-specversion": "1.0",
        "ce-time": datetime.now(UTC).isoformat(),
    }


def test_cloud_events(fuzz_stack, rest):
    def healthy() -> None:
        values = [*fuzz_stack.pool.numeric[0].tolist(), "grocery", "pos", "DE", "EUR", "13"]
        body = {"instances": [dict(zip(MODEL_INPUTS, values, strict=True))]}
        status, data = rest.send("POST", "/", json.dumps(body).encode(), event_headers())
        assert status == 202, data

    def send(case) -> tuple[str, int | None]:
        status, _ = rest.post(*case)
        if status != 202:
            return str(status), None
        return str(status), len(json.loads(case[1].body)) if case[1].content_type == BATCH else 1

    paths = st.sampled_from(["/", "/", "/", "/anything", V1])
    bodies = encoded(cloud_event_bodies(), ce_headers()) | cloud_event_batches
    cases = st.tuples(paths, bodies)
    fuzz(
        endpoint(fuzz_stack, "detector CloudEvents", "relearn_drift_events_ingested_total", healthy),
        cases,
        send,
    )


def test_labels(fuzz_stack, rest):
    def healthy() -> None:
        body = [{"transaction_id": str(uuid.uuid4()), "chargeback_timestamp": datetime.now(UTC).isoformat()}]
        status, data = rest.send("POST", "/labels", json.dumps(body).encode(), JSON)
        assert status == 202 and json.loads(data)["received"] == 1, data

    def send(case) -> tuple[str, int | None]:
        status, body = rest.post("/labels", case)
        return str(status), json.loads(body)["received"] if status == 202 else None

    labelled = endpoint(fuzz_stack, "detector /labels", "relearn_drift_labels_received_total", healthy)
    fuzz(labelled, encoded(labels), send)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/", b"[" * 100_000 + b"]" * 100_000, id="deep-event"),
        pytest.param("/labels", b"[" * 100_000 + b"]" * 100_000, id="deep-labels"),
        pytest.param("/", EMPTY_V2, id="empty-v2-event"),
        pytest.param("/labels", LABEL_HUGE_OFFSET, id="label-time-offset"),
    ],
)
def test_found_defects_are_client_errors(fuzz_stack, path, body):
    rest = Rest(fuzz_stack.detector.url)
    try:
        status, data = rest.send("POST", path, body, event_headers())
    finally:
        rest.close()
    assert status == 400, data
