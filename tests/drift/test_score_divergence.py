"""Score divergence: canary/shadow windows' scores vs the last stable window's, as a KS-statistic gauge."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import WINDOW, scenario_stream
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.detector import DriftTester
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor, Window
from relearn.monitoring.settings import NON_STATIONARY_INPUTS, DriftSettings

# KS statistic of two samples of WINDOW (1000) draws: under the same distribution its 99.9% quantile is
# about 1.95 * sqrt(2 / 1000) ~= 0.087, so < 0.15 holds with a wide margin; Beta(2, 5) vs Beta(4.5, 5)
# differ by ~0.45 in population KS distance, ~5 sd of the sample statistic above 0.3 (seeded anyway).
HIGH, LOW = 0.3, 0.15


def _close(monitor: Monitor, track: str, rows: pd.DataFrame, scores: np.ndarray, index: int) -> dict:
    """Close one window of ``track`` through the monitor, as its thread does."""
    window = Window(rows=rows[list(MODEL_INPUTS)].to_dict("records"), scores=scores.tolist(), index=index)
    monitor._close(track, window)
    return monitor.results[track][-1]


def _gauge(monitor: Monitor, track: str) -> float | None:
    return monitor.metrics.registry.get_sample_value("relearn_drift_score_divergence", {"track": track})


def test_canary_scores_shifted_from_stable_give_a_high_divergence_and_identical_ones_a_low_one(tmp_path):
    reference, before, _ = scenario_stream("covariate_shift")
    rows = before.iloc[:WINDOW]
    rng = np.random.default_rng(11)
    monitor = Monitor(DriftSettings(data_dir=tmp_path, reports=False), Metrics(), Alerter(3600, None))
    monitor.tester = DriftTester(reference[[*MODEL_INPUTS, "score"]], exclude=list(NON_STATIONARY_INPUTS))
    try:
        shadow_first = _close(monitor, "shadow", rows, rng.beta(2, 5, WINDOW), 0)
        assert "score_divergence" not in shadow_first and _gauge(monitor, "shadow") is None, "no stable yet"

        _close(monitor, "stable", rows, rng.beta(2, 5, WINDOW), 0)
        assert _gauge(monitor, "stable") is None, "stable is the comparison, not a labelled series"

        shifted = _close(monitor, "canary", rows, rng.beta(4.5, 5, WINDOW), 0)
        high = _gauge(monitor, "canary")
        assert high is not None and high > HIGH and shifted["score_divergence"] == high, high

        same = _close(monitor, "canary", rows, rng.beta(2, 5, WINDOW), 1)
        low = _gauge(monitor, "canary")
        assert low is not None and low < LOW and same["score_divergence"] == low, low

        _close(monitor, "shadow", rows, rng.beta(2, 5, WINDOW), 1)
        assert _gauge(monitor, "shadow") < LOW
    finally:
        monitor.conn.close()
    assert 0.0 <= low < HIGH < high <= 1.0
