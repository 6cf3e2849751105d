"""The data contract: one definition, the same verdict and the same words in every consumer.

The pipeline's validation, the transformer's request parsing (v1 and v2; the real server over v1, v2 REST and
gRPC is in tests/serving/test_serving.py), batch scoring and the feature feed (a real process) all refuse the
same bad record with the same message, and change together when the contract changes in one place.
"""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
from kserve.errors import InvalidInput

from relearn.data import contract
from relearn.data.generator import GeneratorConfig, generate
from relearn.data.scenarios import SCENARIOS
from relearn.data.schema import CATEGORICAL_DOMAINS, CURRENCIES, REQUEST_FIELDS
from relearn.data.validate import validate
from relearn.features.feed import transaction_events
from relearn.serving.batch import BatchSettings, _held_to_contract, refused_path, run
from relearn.serving.config import TransformerSettings
from relearn.serving.transformer_model import FraudTransformer
from support.feed import T0, feed  # noqa: F401  (the feed process fixture)
from support.kserve import MESSAGE, v2_request

GOOD = {
    "transaction_id": "t-good", "event_timestamp": T0, "user_id": "u1", "merchant_id": "m1", "amount": 42.5,
    "currency": "EUR", "merchant_category": "grocery", "channel": "pos", "country": "DE", "device_id": "d1",
}  # fmt: skip
BAD = {**GOOD, "transaction_id": "t-bad", "amount": -3.0}


def frame_of(records: list[dict]) -> pd.DataFrame:
    """Records as the lake holds them: every request field a column, event times tz-aware."""
    frame = pd.DataFrame(records, columns=list(REQUEST_FIELDS))
    return frame.assign(event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True))


def transformer_error(records: list[dict], protocol: str) -> str:
    """What the transformer's request parsing answers (in process: the same code the server runs)."""
    transformer = FraudTransformer(TransformerSettings())
    with pytest.raises(InvalidInput) as refused:
        if protocol == "v1":
            transformer._v1_columns({"instances": records})
        else:
            transformer._v2_columns(v2_request(records))
    return str(refused.value)


def test_the_contract_covers_the_request_fields_and_the_schemas_domains():
    assert [r.field for r in contract.TRANSACTION] != list(REQUEST_FIELDS)  # currency moves before amount
    assert sorted(r.field for r in contract.TRANSACTION) == sorted(REQUEST_FIELDS)
    assert contract.required() == (
        "transaction_id", "event_timestamp", "user_id", "merchant_id", "currency", "amount"
    )  # fmt: skip
    assert {r.field: r.domain for r in contract.TRANSACTION if r.kind == "category"} == CATEGORICAL_DOMAINS
    assert set(contract.AMOUNT_MAX) == set(CURRENCIES)


CASES = [
    {},
    {"amount": -3.0},
    {"amount": 0},
    {"amount": -0.0},
    {"amount": 1e-9},
    {"amount": 50_000},
    {"amount": 50_000.01},
    {"amount": float("nan")},
    {"amount": float("inf")},
    {"amount": "12"},
    {"amount": True},
    {"amount": None},
    {"currency": "SEK", "amount": 60_000.0},  # EUR 5,500: an ordinary journey in the simulated world
    {"currency": "SEK", "amount": 600_000.0},
    {"currency": "XXX"},
    {"currency": "eur"},
    {"currency": None},
    {"currency": ""},
    {"merchant_category": None},
    {"merchant_category": ""},
    {"merchant_category": "crypto"},
    {"merchant_category": 5},
    {"channel": "teleport"},
    {"country": "de"},
    {"device_id": None},
    {"device_id": 5},
    {"transaction_id": ""},
    {"user_id": None},
    {"merchant_id": 5},
    {"event_timestamp": "yesterday"},
    {"event_timestamp": "2026-03-01"},
    {"event_timestamp": "20260301T000000Z"},
    {"event_timestamp": "2026-13-01T00:00:00"},
    {"event_timestamp": "9999-01-01T00:00:00"},
    {"event_timestamp": None},
    {"event_timestamp": 5},
    {"channel": "x" * 500},
    {"currency": "XXX", "amount": -3.0},  # two faults: the currency is named, as rules go in order
]


def test_requests_and_frames_get_the_same_verdict_in_the_same_words():
    records = [{**GOOD, **case} for case in CASES]
    frame = pd.DataFrame(records, columns=list(REQUEST_FIELDS)).astype(object)
    by_frame = contract.frame_violations(frame)
    for i, record in enumerate(records):
        try:
            contract.check_columns({k: [v] for k, v in record.items()}, 1)
            by_request = None
        except contract.Violation as exc:
            assert str(exc).startswith("row 0: ") and exc.row == 0
            by_request = exc.message
        by_rows = by_frame.get(i)
        assert (by_rows and by_rows.removeprefix(f"row {i}: ")) == by_request, CASES[i]
    assert by_frame[1] == f"row 1: {MESSAGE}"
    accepted = {i for i in range(len(CASES)) if i not in by_frame.index}
    assert accepted == {0, 4, 5, 12, 18, 19, 24, 30, 31}, [CASES[i] for i in sorted(accepted)]
    assert by_frame[36].endswith("(got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...)")  # echoed shortened


def test_one_bad_record_is_refused_alike_by_pipeline_transformer_feed_and_batch_scoring(feed, tmp_path):  # noqa: F811
    expected = f"row 1: {MESSAGE}"
    report = validate(frame_of([GOOD, BAD, {**GOOD, "transaction_id": "t-3"}]))
    assert report.check("contract:amount").detail == expected  # 1 row of 3: beyond the 0.1 % tolerated
    assert not report.check("contract:amount").ok

    assert transformer_error([GOOD, BAD], "v1") == expected
    assert transformer_error([GOOD, BAD], "v2") == expected
    with pytest.raises(contract.Violation) as refused:
        transaction_events([GOOD, BAD])
    assert str(refused.value) == expected

    url, _ = feed
    response = httpx.post(f"{url}/transactions", json=[GOOD, BAD], timeout=10)
    assert (response.status_code, response.json()) == (400, {"error": expected})

    frame = frame_of([GOOD, BAD])
    kept, refused = _held_to_contract(frame, tmp_path / "scores.parquet")
    assert refused == 1 and kept["transaction_id"].tolist() == ["t-good"]
    listed = pd.read_parquet(refused_path(tmp_path / "scores.parquet"))
    assert listed.to_dict("records") == [{"row": 1, "transaction_id": "t-bad", "error": expected}]
    frame.iloc[1:].to_parquet(tmp_path / "bad.parquet")  # only bad rows: refused before any model loads
    with pytest.raises(SystemExit) as stopped:
        run(BatchSettings(input=tmp_path / "bad.parquet", output=tmp_path / "out.parquet", progress=False))
    assert str(stopped.value) == f"every row breaks the data contract, e.g. row 0: {MESSAGE}"


def test_changing_the_contract_in_one_place_changes_every_consumer(monkeypatch, tmp_path):
    record = {**GOOD, "amount": 150.0}
    assert validate(frame_of([record])).check("contract:amount").ok
    assert len(transaction_events([record])) == 1
    assert _held_to_contract(frame_of([GOOD, record]), tmp_path / "s.parquet")[1] == 0

    monkeypatch.setitem(contract.AMOUNT_MAX, "EUR", 100.0)  # the one place: relearn.data.contract
    expected = "row 1: field 'amount' must be a number > 0 and <= 100 for currency EUR (got 150.0)"
    assert validate(frame_of([GOOD, record])).check("contract:amount").detail == expected
    assert transformer_error([GOOD, record], "v1") == expected
    assert transformer_error([GOOD, record], "v2") == expected
    with pytest.raises(contract.Violation) as refused:
        transaction_events([GOOD, record])
    assert str(refused.value) == expected
    assert _held_to_contract(frame_of([GOOD, record]), tmp_path / "s.parquet")[1] == 1


def test_the_simulated_world_keeps_the_contract_but_for_the_units_bug():
    """Every scenario's records keep the contract, but the units bug's EUR amounts x100 above EUR 50,000.

    The null bug's missing categories are a batch-level fault (null_fraction), not a record's.
    """
    config = {"n_users": 600, "days": 10, "n_merchants": 150, "seed": 3}
    for scenario in SCENARIOS:
        data = generate(GeneratorConfig(**config, scenario=scenario))
        masks = contract.frame_masks(data.transactions)
        broken = {field: int(mask.sum()) for field, mask in masks.items() if mask.any()}
        if scenario == "data_bug_units":
            assert set(broken) == {"amount"} and broken["amount"] > 0
            refused = data.transactions[masks["amount"]]
            assert (refused["currency"] == "EUR").all() and (refused["amount"] > 50_000).all()
            assert (refused["event_timestamp"] >= data.onset).all()
        else:
            assert broken == {}, (scenario, broken)
    assert np.isfinite(list(contract.AMOUNT_MAX.values())).all()
