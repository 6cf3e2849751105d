"""Fuzz the feature feed: POST /transactions and POST /chargebacks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from fuzz.fuzz_checks import JSON, transaction
from fuzz.fuzz_harness import Endpoint, Rest, fuzz
from fuzz.fuzz_stack import scrape, total
from fuzz.fuzz_strategies import encoded, feed_chargebacks, feed_transactions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rest(fuzz_stack):
    client = Rest(fuzz_stack.feed.url)
    yield client
    client.close()


@pytest.mark.parametrize(
    ("path", "kind", "records"),
    [("/transactions", "transaction", feed_transactions), ("/chargebacks", "chargeback", feed_chargebacks)],
    ids=["transactions", "chargebacks"],
)
def test_feed(fuzz_stack, rest, path, kind, records):
    def counters() -> dict[str, float]:
        samples = scrape(fuzz_stack.feed.url)
        return {"ok": total(samples, "relearn_feature_feed_records_total", kind=kind, outcome="ok")}

    def healthy() -> None:
        record = transaction(str(uuid.uuid4()))
        if kind == "chargeback":
            record = {"transaction_id": record["transaction_id"], "merchant_id": "m1"}
            record["received_timestamp"] = datetime.now(UTC).isoformat()
        status, data = rest.send("POST", path, json.dumps([record]).encode(), JSON)
        assert status == 200 and json.loads(data)["accepted"] == 1, data

    def send(case) -> tuple[str, int | None]:
        status, body = rest.post(path, case)
        return str(status), json.loads(body)["accepted"] if status == 200 else None

    endpoint = Endpoint(
        f"feed {path}", [fuzz_stack.feed.log_path], counters, lambda t: {"ok": float(t.units)}, healthy
    )
    fuzz(endpoint, encoded(records), send)
