"""The response each kind of drift gets: page on a data bug, recalibrate on a prior shift, retrain otherwise.

Windows of the generator's scenarios go through the monitor as its thread closes them (real drift tests);
the label path uses controlled scores: a pure prior shift (more fraud drawn from the same class-conditional
score distributions) against concept drift (new fraud the model scores like legitimate traffic).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import WINDOW, scenario_stream
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.detector import DriftTester
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor, Window
from relearn.monitoring.settings import NON_STATIONARY_INPUTS, DriftSettings


class _Actions:
    def __init__(self) -> None:
        self.retrain: list[dict] = []
        self.recalibrate: list[dict] = []


def _monitor(tmp_path, reference: pd.DataFrame | None = None, **options) -> tuple[Monitor, _Actions]:
    actions = _Actions()
    now = [1_000_000.0]
    alerter = Alerter(0, None, actions.retrain.append, recalibrate=actions.recalibrate.append)
    alerter.clock = lambda: now[0]
    settings = DriftSettings(data_dir=tmp_path, reports=False, cooldown_s=0, **options)
    monitor = Monitor(settings, Metrics(), alerter)
    if reference is not None:
        monitor.tester = DriftTester(reference[[*MODEL_INPUTS, "score"]], exclude=list(NON_STATIONARY_INPUTS))
    return monitor, actions


def _close(monitor: Monitor, rows: pd.DataFrame, index: int, scores: np.ndarray | None = None) -> dict:
    scores = rows["score"].to_numpy() if scores is None else scores
    window = Window(rows=rows[list(MODEL_INPUTS)].to_dict("records"), scores=scores.tolist(), index=index)
    monitor._close("stable", window)
    return monitor.results["stable"][-1]


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        ("data_bug_units", "out_of_range:amount_ratio_user_mean"),
        ("data_bug_nulls", "null_fraction:merchant_category"),
    ],
)
def test_a_data_bug_pages_and_starts_nothing_even_later(tmp_path, scenario, check):
    reference, before, after = scenario_stream(scenario)
    monitor, actions = _monitor(tmp_path, reference)
    try:
        assert "violations" not in _close(monitor, before.iloc[:WINDOW], 0)
        record = _close(monitor, after.iloc[:WINDOW], 1)
        assert any(v.startswith(check) for v in record["violations"]), record
        monitor._incident({"kind": "schedule", "track": "stable"})  # the bug stays: no scheduled training
        text = monitor.metrics.registry.get_sample_value
        assert text("relearn_drift_responses_total", {"response": "page"}) == 2
    finally:
        monitor.conn.close()
    assert actions.retrain == [] and actions.recalibrate == []


def test_a_window_straddling_the_onset_of_nulls_already_pages(tmp_path):
    reference, before, after = scenario_stream("data_bug_nulls")
    rows = pd.concat([before.iloc[-270:], after.iloc[:30]])  # 30 rows after the onset, ~9 of them null
    monitor, actions = _monitor(tmp_path, reference)
    try:
        record = _close(monitor, rows, 0)
    finally:
        monitor.conn.close()
    assert record["violations"][0].startswith("null_fraction:merchant_category"), record
    assert actions.retrain == []


def test_covariate_shift_retrains(tmp_path):
    reference, _, after = scenario_stream("covariate_shift")
    monitor, actions = _monitor(tmp_path, reference)
    try:
        record = _close(monitor, after.iloc[2 * WINDOW : 3 * WINDOW], 0)
    finally:
        monitor.conn.close()
    assert record["drift"] and "violations" not in record
    assert [a["response"] for a in actions.retrain] == ["retrain"]
    assert actions.retrain[0]["why"].startswith("covariate drift: inputs [")
    assert actions.retrain[0]["train_mode"] == "auto"  # the task did not change: fine-tune the champion


def _traffic(rng: np.random.Generator, n: int, fraud: float, unseen: float, start: float) -> list[tuple]:
    """Predictions with labels: legitimate ~ Beta(2, 8), known fraud ~ Beta(6, 3), unseen fraud scored
    like legitimate traffic (the model cannot tell it)."""
    kind = rng.choice(3, n, p=[1 - fraud - unseen, fraud, unseen])
    scores = np.where(kind == 1, rng.beta(6, 3, n), rng.beta(2, 8, n))
    return [
        (f"x{start + i}", start + i, float(s), int(k > 0))
        for i, (s, k) in enumerate(zip(scores, kind, strict=True))
    ]


def _serve(monitor: Monitor, rows: list[tuple]) -> None:
    """Log the predictions, their frauds' chargebacks, and update the quality as the monitor does."""
    with monitor.conn:
        monitor.conn.executemany(
            "INSERT INTO predictions VALUES (?, 'stable', ?, ?, '1')", [r[:3] for r in rows]
        )
        newest = rows[-1][1] + 1
        monitor.conn.executemany(
            "INSERT INTO labels VALUES (?, 1, ?, ?)", [(r[0], newest, newest) for r in rows if r[3]]
        )
    monitor.update_quality()


@pytest.mark.parametrize(
    ("fraud", "unseen", "response"),
    [(0.05, 0.0, "recalibrate"), (0.01, 0.03, "retrain")],
    ids=["prior_shift", "concept_drift"],
)
def test_a_quality_drop_recalibrates_under_prior_shift_and_retrains_under_concept_drift(
    tmp_path, fraud, unseen, response
):
    rng = np.random.default_rng(21)
    monitor, actions = _monitor(tmp_path, quality_window=4000)
    try:
        _serve(monitor, _traffic(rng, 4000, 0.01, 0.0, 0))  # before: the baseline
        _serve(monitor, _traffic(rng, 4000, fraud, unseen, 10_000))
        monitor._incident({"kind": "quality", "track": "stable", "reasons": ["recall"]})
    finally:
        monitor.conn.close()
    fired = actions.recalibrate if response == "recalibrate" else actions.retrain
    assert [a["response"] for a in fired] == [response], (actions.retrain, actions.recalibrate)
    assert "ROC-AUC" in fired[0]["why"]
    # A new mapping is learnt from scratch; a recalibration trains nothing.
    assert fired[0].get("train_mode") == ("scratch" if response == "retrain" else None)


def test_scores_moving_without_the_inputs_recalibrate_only_when_the_labels_show_the_ranking_held(tmp_path):
    reference, before, _ = scenario_stream("none")
    rows = before.iloc[:WINDOW]
    scores = rows["score"].to_numpy().copy()
    rng = np.random.default_rng(3)
    more_fraud = rng.choice(WINDOW, 150, replace=False)  # a campaign: more high scores, same inputs
    scores[more_fraud] = np.quantile(reference["score"], rng.uniform(0.97, 1.0, 150))
    monitor, actions = _monitor(tmp_path, reference, quality_window=4000)
    try:
        record = _close(monitor, rows, 0, scores)  # no labels yet: scores alone cannot tell
        assert record["drifted"] == ["score"]
        assert actions.retrain[-1]["why"].endswith("too few labels to tell a prior shift from concept drift")
        _serve(monitor, _traffic(rng, 4000, 0.01, 0.0, 0))
        _serve(monitor, _traffic(rng, 4000, 0.05, 0.0, 10_000))  # labels: more fraud, ranking unchanged
        _close(monitor, rows, 1, scores)
    finally:
        monitor.conn.close()
    assert [a["response"] for a in actions.recalibrate] == ["recalibrate"] and len(actions.retrain) == 1


def test_local_mode_starts_the_command_of_the_response(tmp_path):
    import shlex
    import sys
    import time

    from relearn.monitoring.trigger import recalibrate_action, retrain_action

    def command(name: str) -> str:
        script = f"open({str(tmp_path / name)!r}, 'a').write('run')"
        return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"

    settings = DriftSettings(
        data_dir=tmp_path, trigger_mode="local", local_command=command("retrain"),
        recalibrate_command=command("recalibrate"), cooldown_s=0,
    )  # fmt: skip
    alerter = Alerter(0, None, retrain_action(settings), recalibrate=recalibrate_action(settings))
    for response in ("page", "recalibrate"):
        assert alerter.incident({"kind": "quality", "response": response})
    deadline = time.monotonic() + 20
    while not (tmp_path / "recalibrate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert (tmp_path / "recalibrate").read_text() == "run" and not (tmp_path / "retrain").exists()


def test_the_roc_auc_baseline_is_the_versions_first_predictions_until_they_hold_enough_frauds(tmp_path):
    from relearn.monitoring.response import MIN_POSITIVES, roc_auc

    rng = np.random.default_rng(8)
    monitor, _ = _monitor(tmp_path, quality_window=1000)
    rows = _traffic(rng, 1000, 0.004, 0.0, 0) + _traffic(rng, 3000, 0.01, 0.02, 1000)  # then concept drift
    try:
        _serve(monitor, rows)
    finally:
        monitor.conn.close()
    labels = np.array([r[3] for r in rows])
    n = int(np.flatnonzero(np.cumsum(labels) >= MIN_POSITIVES)[0]) + 1
    assert n > 1000  # the first window held too few frauds: the baseline reaches past it
    first = roc_auc(np.array([r[2] for r in rows[:n]]), labels[:n])
    assert monitor.responder.auc_baseline["stable"] == first[0]
    assert monitor.responder.auc_now["stable"][0] < first[0] - 0.1  # the newest window: the drift


def test_local_mode_passes_the_incidents_train_mode_to_the_pipeline_command(tmp_path):
    """``pipelines.run`` takes every pipeline parameter as an option: ``--train-mode auto``."""
    import json
    import shlex
    import sys
    import time

    from relearn.monitoring.trigger import retrain_action

    out = tmp_path / "argv.json"
    script = f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    settings = DriftSettings(data_dir=tmp_path, trigger_mode="local", local_command=command, cooldown_s=0)
    action = retrain_action(settings)
    assert action is not None
    action({"kind": "drift", "response": "retrain", "train_mode": "auto"})
    deadline = time.monotonic() + 20
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert json.loads(out.read_text()) == ["--train-mode", "auto"]
