"""The feature feed over HTTP: unscored transactions and chargebacks reach the state once, bad input none."""

from __future__ import annotations

import httpx
import pytest

from relearn.features.state import Event
from support.feed import T0, feed  # noqa: F401  (the feed process fixture)


def probe(state, minutes: int = 1):
    t = 1_772_366_400_000_000 + minutes * 60 * 10**6  # T0 + minutes
    return state.read([Event("probe", t, "u1", "m1")])[0]


def test_transactions_and_chargebacks_count_once(feed):  # noqa: F811
    url, state = feed
    body = [
        {"transaction_id": "a", "event_timestamp": T0, "user_id": "u1", "merchant_id": "m1", "amount": 10.0,
         "currency": "EUR"},
        {"transaction_id": "b", "event_timestamp": T0, "user_id": "u1", "merchant_id": "m1", "amount": 30.0,
         "country": "DE", "device_id": None, "currency": "EUR", "channel": "pos"},
    ]  # fmt: skip
    for _ in range(2):  # a retry
        response = httpx.post(f"{url}/transactions", json=body, timeout=10)
        assert response.status_code == 200, response.text
    features = probe(state)
    assert features["user_txn_count_1h"] == 2 and features["user_amount_mean_7d"] == 20.0
    chargeback = [{"transaction_id": "a", "merchant_id": "m1", "received_timestamp": T0}]
    assert httpx.post(f"{url}/chargebacks", json=chargeback, timeout=10).json() == {"accepted": 1, "new": 1}
    assert httpx.post(f"{url}/chargebacks", json=chargeback, timeout=10).json() == {"accepted": 1, "new": 0}
    assert probe(state)["merchant_chargeback_rate_30d"] == 0.5
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'relearn_feature_feed_records_total{kind="transaction",outcome="ok"} 4.0' in metrics


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"amount": "NaN"}, "amount"),
        ({"event_timestamp": "yesterday"}, "event_timestamp"),
        ({"user_id": ""}, "user_id"),
        ({"colour": "red"}, "colour"),
        (
            {"amount": -3.0},
            "row 1: field 'amount' must be a number > 0 and <= 50000 for currency EUR (got -3.0)",
        ),
        ({"currency": None}, "currency"),
        (
            {"channel": "teleport"},
            "row 1: field 'channel' must be one of pos, contactless, ecommerce, atm or null",
        ),
        ({"event_timestamp": "2026-03-01T09:00:00+00:00"}, "event_timestamp"),  # beyond the lateness bound
        ({"event_timestamp": "2099-01-01T00:00:00+00:00"}, "event_timestamp"),  # the future
    ],
)
def test_bad_records_are_a_400_naming_the_field_and_store_nothing(feed, record, field):  # noqa: F811
    url, state = feed
    good = {"transaction_id": "g", "event_timestamp": T0, "user_id": "u1", "merchant_id": "m1", "amount": 1.0,
            "currency": "EUR"}  # fmt: skip
    assert httpx.post(f"{url}/transactions", json=[good], timeout=10).status_code == 200  # sets the clock
    before = probe(state, 5)
    bad = {**good, "transaction_id": "x", **record}
    ok = {**good, "transaction_id": "y"}
    response = httpx.post(f"{url}/transactions", json=[ok, bad], timeout=10)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"], response.text
    assert probe(state, 5) == before  # neither record of the refused batch
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
