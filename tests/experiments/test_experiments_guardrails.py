"""Guardrails stop an experiment at once on a broken arm; missing data is unknown, not passed."""

from __future__ import annotations

import numpy as np

from relearn.experiments.guardrails import ArmHealth, check, score_drift
from relearn.experiments.settings import ExperimentSettings

S = ExperimentSettings(min_requests=100, max_error_rate=0.01, max_p99_seconds=0.25, max_score_drift=0.3)
HEALTHY = ArmHealth("champion", requests=1000, errors=2, p99_seconds=0.05)


def test_healthy_arms_run_on():
    result = check([HEALTHY, ArmHealth("challenger", 1000, 10, 0.25, 0.1)], S)
    assert not result.stop and result.breaches == [] and result.unknown == []


def test_each_guardrail_stops_at_once():
    assert [str(b) for b in check([HEALTHY, ArmHealth("challenger", 1000, 11, 0.05, 0.0)], S).breaches] == [
        "challenger: error_rate 0.011 > 0.01"
    ]
    assert (
        check([HEALTHY, ArmHealth("challenger", 1000, 0, 0.26, 0.0)], S).breaches[0].guardrail
        == "p99_seconds"
    )
    drifted = check([HEALTHY, ArmHealth("challenger", 1000, 0, 0.05, 0.31)], S)
    assert drifted.stop and drifted.as_dict()["breaches"][0]["guardrail"] == "score_drift"


def test_too_few_requests_or_no_latency_is_unknown():
    result = check([ArmHealth("challenger", requests=10, errors=5)], S)
    assert not result.stop
    assert result.unknown == ["challenger: error_rate (10 < 100 requests)", "challenger: p99_seconds"]


def test_score_drift_catches_a_broken_model():
    rng = np.random.default_rng(0)
    control = rng.beta(1, 30, 5000)
    assert score_drift(rng.beta(1.1, 30, 5000), control) < S.max_score_drift  # another model, similar scores
    assert score_drift(np.zeros(5000), control) > S.max_score_drift  # a model scoring everything 0
