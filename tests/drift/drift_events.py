"""KServe payload-logger events built with the cloudevents SDK (binary mode), as KServe sends them."""

from __future__ import annotations

import json

import pandas as pd
from cloudevents.v1.conversion import to_binary
from cloudevents.v1.http import CloudEvent

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.features.spec import MODEL_INPUTS


def kserve_event(ce_id: str, kind: str, body: dict, endpoint: str = "default", service: str = "fraud"):
    """Headers and body of one binary-mode event with KServe's attributes and extensions."""
    event = CloudEvent(
        {
            "id": ce_id,
            "type": kind,
            "source": f"http://localhost:9081/{service}",
            "inferenceservicename": service,
            "namespace": "relearn",
            "component": "predictor",
            "endpoint": endpoint,
            "metadata": "{}",
            "datacontenttype": "application/json",
        },
        json.dumps(body).encode(),
    )
    headers, data = to_binary(event, data_marshaller=lambda d: d)
    return headers, data


def v1_request(row: pd.Series) -> dict:
    values = {name: (row[name] if isinstance(row[name], str) else float(row[name])) for name in MODEL_INPUTS}
    return {"instances": [{"transaction_id": row["transaction_id"], **values}]}


def transaction_events(
    rows: pd.DataFrame,
    prefix: str,
    endpoint: str = "default",
    version: str | None = None,
    service: str = "fraud",
):
    """Request + response event pairs (v1 bodies) for each row; the response names ``version`` if given."""
    for i, (_, row) in enumerate(rows.iterrows()):
        ce_id = f"{prefix}-{i}"
        response: dict = {"predictions": [float(row["score"])]}
        if version is not None:
            response["model_version"] = version
        yield kserve_event(ce_id, REQUEST_TYPE, v1_request(row), endpoint, service)
        yield kserve_event(ce_id, RESPONSE_TYPE, response, endpoint, service)
