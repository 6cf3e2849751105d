"""The transformer's DataFrame-free path: request parsing and model inputs equal the pandas entry point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kserve.errors import InvalidInput

from relearn.data.contract import epoch_us
from relearn.data.schema import REQUEST_FIELDS
from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
from relearn.features.state import FEATURES
from relearn.features.transforms import cold_start, cold_start_mask, model_input_arrays, model_inputs
from relearn.serving.config import TransformerSettings
from relearn.serving.transformer_model import FraudTransformer
from support.kserve import v2_request

STAMPS = [
    "2026-03-01T12:30:00+00:00",
    "2026-03-01T12:30:00.123456789Z",
    "2026-03-01 23:59:59.999999",
    "2026-03-01T00:00:00+05:30",
    "2026-03-01",
    "20260301T000000Z",
    "1969-12-31T23:59:59.5Z",
    "2026-W09-1",
    "yesterday",
    "2026-13-01T00:00:00",
    "9999-01-01T00:00:00",
]


def test_timestamps_parse_as_pandas_does():
    for text in STAMPS:
        stamp = pd.to_datetime(pd.Series([text]), utc=True, errors="coerce", format="ISO8601")
        expected = None if stamp.isna().iloc[0] else int(stamp.dt.as_unit("us").array.asi8[0])
        assert epoch_us(text) == expected, text


def rows() -> list[dict]:
    base = {"currency": "EUR", "merchant_category": "grocery", "channel": "pos"}
    return [
        {**base, "transaction_id": "a", "event_timestamp": "2026-03-01T12:30:00Z", "user_id": "u1",
         "merchant_id": "m1", "amount": 12.5, "country": "DE", "device_id": "d1"},
        {**base, "transaction_id": "b", "event_timestamp": "2026-03-02T01:00:00.25+01:00", "user_id": "u2",
         "merchant_id": "m2", "amount": 3, "country": None, "device_id": "d9"},
        {**base, "transaction_id": "c", "event_timestamp": "2026-03-02", "user_id": "u3",
         "merchant_id": "m1", "amount": 990.0},
    ]  # fmt: skip


def features() -> list[dict]:
    t = pd.Timestamp("2026-03-01T12:00:00Z").timestamp()
    first = dict.fromkeys(FEATURES, 0.0) | {"user_txn_count_1h": 2.0, "user_txn_count_7d": 5.0}
    first |= {"user_amount_mean_7d": 20.0, "user_amount_std_7d": 4.0, "user_last_txn_unix": t}
    first |= {"user_last_country": "FR", "user_last_device": "d1", "merchant_txn_count_24h": 7.0}
    cold = dict.fromkeys(FEATURES, 0.0) | {"user_last_txn_unix": np.nan}
    cold |= {"user_last_country": None, "user_last_device": None}
    return [first, cold, first | {"user_last_txn_unix": t - 40 * 86400}]


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_request_columns_give_the_model_inputs_of_the_pandas_path(protocol):
    transformer = FraudTransformer(TransformerSettings())
    instances = rows()
    if protocol == "v1":
        events, columns = transformer._v1_columns({"instances": instances})
    else:
        events, columns = transformer._v2_columns(v2_request(instances))
    assert [e.transaction_id for e in events] == ["a", "b", "c"]
    assert events[1].amount == 3.0 and events[1].country == "" and events[2].device_id == ""
    entity = features()
    for name in FEATURES:
        values = [row[name] for row in entity]
        text = name in ("user_last_country", "user_last_device")
        columns[name] = np.array(
            [v or "" for v in values] if text else values, dtype=object if text else float
        )
    numeric, categorical = model_input_arrays(columns, len(events))
    got = pd.DataFrame(numeric, columns=list(NUMERIC_INPUTS))
    got[list(CATEGORICAL_INPUTS)] = categorical
    frame = pd.DataFrame(instances).assign(**pd.DataFrame(entity))
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True, format="ISO8601")
    expected = model_inputs(frame)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert cold_start(columns, 3).tolist() == cold_start_mask(frame).tolist() == [False, True, False]


def test_bad_fields_name_the_field():
    transformer = FraudTransformer(TransformerSettings())
    bad = {
        "event_timestamp": [{**rows()[0], "event_timestamp": "yesterday"}],
        "amount": [{**rows()[0], "amount": float("inf")}],
        "user_id": [{**rows()[0], "user_id": None}],
    }
    for field, instances in bad.items():
        with pytest.raises(InvalidInput, match=field):
            transformer._v1_columns({"instances": instances})
    request = v2_request(rows()[:1])
    request.inputs[REQUEST_FIELDS.index("user_id")]._data = [b"\xff"]
    with pytest.raises(InvalidInput, match="user_id"):
        transformer._v2_columns(request)
