"""Drift tests on generator streams: no drift before the onset, each scenario detected after it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import WINDOW, scenario_stream
from relearn.monitoring.detector import DriftTester

STATIONARY_WINDOWS = 10


@pytest.fixture(scope="module")
def tester() -> DriftTester:
    reference, _, _ = scenario_stream("none")
    return DriftTester(reference, p_val=0.01, correction="bonferroni", exclude=["hour_of_day", "day_of_week"])


def windows(frame, n):
    return [frame.iloc[i * WINDOW : (i + 1) * WINDOW] for i in range(min(n, len(frame) // WINDOW))]


def test_stationary_stream_has_no_drift(tester):
    # Windows from the reference's own period: after it, merchant_chargeback_rate_30d really moves (the
    # generated world's chargebacks accumulate over 30 days), which the tests rightly call drift.
    _, before, _ = scenario_stream("none")
    stream = windows(before, STATIONARY_WINDOWS)
    flagged = [i for i, w in enumerate(stream) if tester.test(w, w["score"].to_numpy()).is_drift]
    # Family-wise p=0.01 (Bonferroni over inputs + score): E[false alarms] <= 0.1 in 10 windows; allow 1.
    assert len(stream) == STATIONARY_WINDOWS
    assert len(flagged) <= 1, flagged


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("covariate_shift", {"merchant_category", "log_amount"}),
        ("data_bug_units", {"log_amount"}),
        ("data_bug_nulls", {"merchant_category"}),
        ("label_shift", None),
    ],
)
def test_scenario_detected_after_onset_not_before(scenario, expected):
    reference, before, after = scenario_stream(scenario)
    tester = DriftTester(reference, p_val=0.01, exclude=["hour_of_day", "day_of_week"])
    pre = [tester.test(w, w["score"].to_numpy()) for w in windows(before, 4)]
    assert not any(r.is_drift for r in pre), [r.drifted for r in pre]
    post = [tester.test(w, w["score"].to_numpy()) for w in windows(after, 2)]
    assert any(r.is_drift for r in post), [min(r.p_values.items(), key=lambda kv: kv[1]) for r in post]
    drifted = set().union(*(r.drifted for r in post))
    if expected:
        assert expected & drifted, drifted


def test_label_shift_moves_the_scores_or_inputs():
    reference, _, after = scenario_stream("label_shift")
    tester = DriftTester(reference, p_val=0.01, exclude=["hour_of_day", "day_of_week"])
    result = tester.test(after.iloc[: 4 * WINDOW], after["score"].to_numpy()[: 4 * WINDOW])
    assert result.is_drift
    assert np.isfinite(result.p_values["score"])
