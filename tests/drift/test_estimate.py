"""Performance before labels: the confidence-based estimate of precision and recall at the alert budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import WINDOW, scenario_stream
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring import store
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.detector import DriftTester
from relearn.monitoring.estimate import WindowEstimates, estimate_at_budget, fit_calibrator
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor, Window
from relearn.monitoring.quality import at_budget
from relearn.monitoring.settings import NON_STATIONARY_INPUTS, DriftSettings

BUDGET = 0.02
N = 20_000  # per window: ~200 frauds, so the realized recall's own noise is ~0.035


def world(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two features, the first shifted by ``shift`` (covariate shift); the true P(fraud | x) and labels."""
    x = rng.normal(0.0, 1.0, (n, 2))
    x[:, 0] += shift
    p = 1.0 / (1.0 + np.exp(-(-5.5 + 1.5 * x[:, 0] + 1.0 * x[:, 1])))
    return p, (rng.random(n) < p).astype(np.float64)


def errors(scores_of, shift: float = 0.0, seeds: int = 60, calibrate=None) -> np.ndarray:
    """Estimated minus realized recall at budget over ``seeds`` windows."""
    out = []
    for seed in range(seeds):
        p, y = world(np.random.default_rng(seed), N, shift)
        s = scores_of(p)
        est = estimate_at_budget(s, BUDGET, calibrate) if calibrate else estimate_at_budget(s, BUDGET)
        out.append(est.recall - at_budget(s, y, BUDGET)[1])
    return np.asarray(out)


def test_calibrated_scores_estimate_realized_recall() -> None:
    err = errors(lambda p: p)
    assert abs(err.mean()) < 0.01  # unbiased
    assert np.abs(err).mean() < 0.04  # within the realized value's own sampling noise


def test_estimated_precision_matches_realized() -> None:
    p, y = world(np.random.default_rng(0), 200_000)
    est = estimate_at_budget(p, BUDGET)
    precision, recall = at_budget(p, y, BUDGET)
    assert est.precision == pytest.approx(precision, abs=0.01)
    assert est.recall == pytest.approx(recall, abs=0.01)
    assert est.expected_frauds == pytest.approx(y.sum(), rel=0.03)


def test_miscalibrated_scores_need_the_reference_calibration() -> None:
    def squashed(p: np.ndarray) -> np.ndarray:  # same ranking, overconfident
        return np.sqrt(p)

    assert np.abs(errors(squashed, seeds=20)).mean() > 0.1  # raw scores as probabilities: wrong
    p, y = world(np.random.default_rng(999), 100_000)
    calibrate = fit_calibrator(squashed(p), y)
    assert np.abs(errors(squashed, seeds=20, calibrate=calibrate)).mean() < 0.04


def test_estimate_tracks_covariate_shift() -> None:
    """The reference calibration stays valid when only the inputs move: the estimate follows recall down."""
    p, y = world(np.random.default_rng(999), 100_000)
    calibrate = fit_calibrator(np.sqrt(p), y)
    before, after = errors(np.sqrt, 0.0, 20, calibrate), errors(np.sqrt, 1.0, 20, calibrate)
    assert np.abs(before).mean() < 0.04 and np.abs(after).mean() < 0.04
    # and the realized recall did move (more frauds than reviewed slots): the estimate had something to track
    realized = [at_budget(*world(np.random.default_rng(s), N, 0.0), BUDGET)[1] for s in range(5)]
    shifted = [at_budget(*world(np.random.default_rng(s), N, 1.0), BUDGET)[1] for s in range(5)]
    assert np.mean(realized) - np.mean(shifted) > 0.05


def test_estimate_moves_before_the_realized_value() -> None:
    """A shift at window 10, labels maturing 5 windows later: the estimate shows the drop 5 windows sooner."""
    onset, delay, rng = 10, 5, np.random.default_rng(3)
    estimated, realized = [], []
    for i in range(20):
        p, y = world(rng, N, 1.0 if i >= onset else 0.0)
        estimated.append(estimate_at_budget(p, BUDGET).recall)
        realized.append(at_budget(p, y, BUDGET)[1])
    base = np.mean(estimated[:onset])
    # known at window i: the estimate of window i, the realized value of window i - delay
    est_alarm = next(i for i in range(20) if estimated[i] < base - 0.1)
    real_alarm = next(i + delay for i in range(20) if realized[i] < base - 0.1)
    assert est_alarm == onset
    assert real_alarm >= onset + delay


def test_window_estimates_export_and_realize(tmp_path) -> None:
    """Gauges per (track, version) on close; ``realized`` in a window's record once its labels mature."""
    conn = store.connect(tmp_path / "log.sqlite3")
    metrics = Metrics()
    estimates = WindowEstimates(budget=0.1, maturity_s=100.0)
    rng = np.random.default_rng(0)
    records, windows = [], []
    for w, version in enumerate(["1", "2"]):
        p = rng.uniform(0, 0.3, 500)
        y = (rng.random(500) < p).astype(int)
        ids = [f"{w}-{i}" for i in range(500)]
        record: dict = {"index": w}
        estimates.close(conn, metrics, None, "stable", record, p, [version] * 500, ids)
        records.append(record)
        windows.append((p, y))
        with conn:
            conn.executemany(
                "INSERT INTO predictions VALUES (?, 'stable', ?, ?, ?)",
                [(t, 1000.0 * w, s, version) for t, s in zip(ids, p, strict=True)],
            )
            conn.executemany(
                "INSERT INTO labels VALUES (?, 1, ?, 0)",
                [(t, 1000.0 * w + 10) for t, f in zip(ids, y, strict=True) if f],
            )
        expected = estimate_at_budget(p, 0.1)
        assert record["estimate"][version]["recall"] == pytest.approx(expected.recall, abs=1e-6)
        sample = metrics.registry.get_sample_value(
            "relearn_drift_estimated_recall_at_budget", {"track": "stable", "model_version": version}
        )
        assert sample == pytest.approx(expected.recall)
    # version 1 left the stable track: its gauge is gone
    gone = {"track": "stable", "model_version": "1"}
    assert metrics.registry.get_sample_value("relearn_drift_estimated_recall_at_budget", gone) is None
    # window 0 matured (newest label at 1010 - 100 > 0), window 1 not: only the first has a realized value
    estimates.realize(conn)
    assert "realized" in records[0] and "realized" not in records[1]
    precision, recall = at_budget(windows[0][0], windows[0][1].astype(float), 0.1)
    assert records[0]["realized"]["1"]["recall"] == pytest.approx(recall, abs=1e-6)
    assert records[0]["realized"]["1"]["precision"] == pytest.approx(precision, abs=1e-6)
    assert not math.isnan(records[0]["estimate"]["1"]["precision"])


def test_monitor_exports_the_estimate_of_each_closed_window_and_pairs_it_with_the_realized(tmp_path) -> None:
    """Through the monitor: a closed window is estimated per version (calibrated on the reference's labels);
    once its labels mature, the next close adds the realized value to its record (what /status shows)."""
    reference, before, _ = scenario_stream("none")
    monitor = Monitor(DriftSettings(data_dir=tmp_path, reports=False), Metrics(), Alerter(3600, None))
    monitor.tester = DriftTester(
        reference[[*MODEL_INPUTS, "score", "is_fraud"]], exclude=list(NON_STATIONARY_INPUTS)
    )
    try:
        for index in range(2):
            rows = before.iloc[index * WINDOW : (index + 1) * WINDOW]
            ids = rows["transaction_id"].astype(str).tolist()
            window = Window(
                rows=rows[list(MODEL_INPUTS)].to_dict("records"),
                scores=rows["score"].tolist(),
                index=index,
                versions=["7"] * WINDOW,
                ids=ids,
            )
            monitor._close("stable", window)
            with monitor.conn:
                monitor.conn.executemany(
                    "INSERT INTO predictions VALUES (?, 'stable', ?, ?, '7')",
                    zip(ids, [float(index)] * WINDOW, rows["score"], strict=True),
                )
                monitor.conn.executemany(
                    "INSERT INTO labels VALUES (?, ?, 10, 0)",
                    zip(ids, rows["is_fraud"].astype(int), strict=True),
                )
        first, second = monitor.results["stable"]
    finally:
        monitor.conn.close()
    rows = before.iloc[:WINDOW]
    calibrate = fit_calibrator(reference["score"].to_numpy(), reference["is_fraud"].to_numpy())
    expected = estimate_at_budget(rows["score"].to_numpy(), monitor.settings.alert_budget, calibrate)
    assert first["estimate"]["7"]["recall"] == pytest.approx(expected.recall, abs=1e-6)
    assert expected.recall != pytest.approx(estimate_at_budget(rows["score"], 0.02).recall, abs=0.01)
    gauge = monitor.metrics.registry.get_sample_value(
        "relearn_drift_estimated_recall_at_budget", {"track": "stable", "model_version": "7"}
    )
    assert gauge == pytest.approx(second["estimate"]["7"]["recall"])
    realized = at_budget(
        rows["score"].to_numpy(), rows["is_fraud"].to_numpy(float), monitor.settings.alert_budget
    )
    assert first["realized"]["7"]["recall"] == pytest.approx(realized[1], abs=1e-6)
    assert "realized" not in second  # closed last: nothing after it realized it
