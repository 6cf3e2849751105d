"""KServe v1 REST (``/v1/models/<m>:predict``): curl and KServe's ``InferenceRESTClient`` (v1) against the
predictor, the transformer and the router. Test ids read ``<client>-v1-rest-<endpoint>``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from conformance.cases import (
    ENDPOINTS,
    MODEL,
    THRESHOLD,
    UNKNOWN,
    UNKNOWN_MODEL,
    VERSION,
    contract,
    v1_bad_instance,
    v1_instances,
)
from conformance.clients import Curl, Failure, kserve_rest

pytestmark = pytest.mark.slow


class CurlV1(Curl):
    name = "curl"

    def live(self, url: str) -> bool:
        return self.get(f"{url}/")["status"] == "alive"

    def model_ready(self, url: str, model: str) -> bool:
        assert MODEL in self.get(f"{url}/v1/models")["models"]
        body = self.get(f"{url}/v1/models/{model}")
        return body["name"] == model and body["ready"]

    def predict(self, url: str, model: str, instances: list[dict]) -> dict:
        return self.get(f"{url}/v1/models/{model}:predict", json.dumps({"instances": instances}))


class KServeV1:
    name = "kserve.rest"

    def _call(self, fn: Any) -> Any:
        return kserve_rest("v1", fn)

    def live(self, url: str) -> bool:
        return self._call(lambda c: c.is_server_live(url))

    def model_ready(self, url: str, model: str) -> bool:
        return self._call(lambda c: c.is_model_ready(url, model))

    def predict(self, url: str, model: str, instances: list[dict]) -> dict:
        return self._call(lambda c: c.infer(url, {"instances": instances}, model_name=model))


CLIENTS = {c.name: c for c in (CurlV1(), KServeV1())}
CELLS = [pytest.param(c, e, id=f"{c}-v1-rest-{e}") for c in CLIENTS for e in ENDPOINTS]


def cell(test: str, params: dict) -> tuple[str, str, str]:
    """This module's tests in the conformance table: (client, route, endpoint)."""
    return params["client"], "v1 REST", params["endpoint"]


def refused(call: Any, status: int, message: str | None, field: str = "") -> None:
    """A ``status`` with the exact ``message`` (None: one naming ``field``) in an ``{"error": ...}`` body."""
    with pytest.raises(Failure) as info:
        call()
    failure = info.value
    assert failure.code == status, failure
    assert failure.message == message if message is not None else f"'{field}'" in failure.message
    if failure.body is not None:  # curl: the raw body
        assert failure.body == {"error": failure.message}
        assert failure.content_type == "application/json"


@pytest.mark.parametrize("client, endpoint", CELLS)
def test_v1_health(stack, client, endpoint):
    url = stack[endpoint].url
    assert CLIENTS[client].live(url) is True
    assert CLIENTS[client].model_ready(url, MODEL) is True


@pytest.mark.parametrize("client, endpoint", CELLS)
def test_v1_predict(stack, expected_scores, client, endpoint):
    instances = v1_instances(endpoint)
    reply = CLIENTS[client].predict(stack[endpoint].url, MODEL, instances)
    assert reply["model_version"] == VERSION
    scores = np.array([p["score"] for p in reply["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(scores, expected_scores[contract(endpoint)], atol=1e-6, rtol=0)
    assert [p["decision"] for p in reply["predictions"]] == (scores >= THRESHOLD).tolist()
    if contract(endpoint) == "transformer":
        ids = [p["transaction_id"] for p in reply["predictions"]]
        assert ids == [row["transaction_id"] for row in instances]


@pytest.mark.parametrize("client, endpoint", CELLS)
def test_v1_unknown_model(stack, client, endpoint):
    c, url = CLIENTS[client], stack[endpoint].url
    refused(lambda: c.predict(url, UNKNOWN, v1_instances(endpoint)), 404, UNKNOWN_MODEL)
    refused(lambda: c.model_ready(url, UNKNOWN), 404, UNKNOWN_MODEL)


@pytest.mark.parametrize("client, endpoint", CELLS)
def test_v1_bad_instance_names_the_field(stack, client, endpoint):
    instances, field, message = v1_bad_instance(endpoint)
    refused(lambda: CLIENTS[client].predict(stack[endpoint].url, MODEL, instances), 400, message, field)
