"""Canary analysis decisions: each gate at and just past its threshold, and the step schedule."""

from __future__ import annotations

import dataclasses

import pytest

from relearn.rollout.analysis import (
    Action,
    AnalysisSettings,
    Evidence,
    Snapshot,
    Verdict,
    decide,
    drop_p_value,
)

CFG = AnalysisSettings()
GOOD = Snapshot(
    canary_requests=500, canary_error_rate=0.0, stable_error_rate=0.0, canary_p99_seconds=0.05,
    score_divergence=0.01, canary_drift_share=0.0, labels=100, canary_precision=0.9, stable_precision=0.9,
    canary_recall=0.8, stable_recall=0.8, canary_reviewed=100, stable_reviewed=100, canary_frauds=100,
    stable_frauds=100,
)  # fmt: skip


@pytest.mark.parametrize(
    ("field", "at_limit", "past"),
    [
        ("canary_error_rate", 0.005, 0.0101),
        ("canary_p99_seconds", 0.25, 0.2501),
        ("score_divergence", 0.1, 0.1001),
        ("canary_drift_share", 0.5, 0.51),
    ],
)
def test_each_gate_edge(field: str, at_limit: float, past: float) -> None:
    assert decide(10, dataclasses.replace(GOOD, **{field: at_limit}), CFG).action == Action.STEP
    bad = decide(10, dataclasses.replace(GOOD, **{field: past}), CFG)
    assert bad.action == Action.ROLLBACK and bad.percent == 0 and bad.reason


def test_drift_on_both_tracks_is_no_reason_to_roll_the_canary_back() -> None:
    """Covariate drift reaches canary and stable alike (a random split): the canary retrained for it must
    not be rolled back for it; drift on the canary's traffic alone still is."""
    both = dataclasses.replace(GOOD, canary_drift_share=0.68, stable_drift_share=0.64)
    assert decide(10, both, CFG).action == Action.STEP
    alone = dataclasses.replace(GOOD, canary_drift_share=0.68, stable_drift_share=0.1)
    bad = decide(10, alone, CFG)
    assert bad.action == Action.ROLLBACK and "above stable's 0.1" in bad.reason


def test_error_rate_increase_over_stable() -> None:
    snap = dataclasses.replace(GOOD, canary_error_rate=0.008, stable_error_rate=0.002)
    assert decide(25, snap, CFG).action == Action.ROLLBACK
    assert decide(25, dataclasses.replace(snap, stable_error_rate=0.004), CFG).action == Action.STEP


@pytest.mark.parametrize("gate", ["precision", "recall"])
def test_label_gate_edge_is_a_one_sided_test(gate: str) -> None:
    """Stable 0.8 of 100, tolerated drop 0.05, p < 0.01: z = (0.75 - c) / sqrt(c(1-c)/100 + 0.0016).

    c = 0.61 gives z = 2.22 (p = 0.013): a drop of 0.19 that sampling noise can explain passes; c = 0.60
    gives z = 2.37 (p = 0.0088): rolled back.
    """
    stable = {"canary_precision": 0.8, "stable_precision": 0.8, "canary_recall": 0.8, "stable_recall": 0.8}
    ok = dataclasses.replace(GOOD, **{**stable, f"canary_{gate}": 0.61})
    assert decide(10, ok, CFG).action == Action.STEP
    bad = decide(10, dataclasses.replace(ok, **{f"canary_{gate}": 0.60}), CFG)
    assert bad.action == Action.ROLLBACK and f"{gate} at budget 0.6 of 100" in bad.reason
    assert drop_p_value(0.61, 100, 0.8, 100, 0.05) == pytest.approx(0.0132, abs=5e-4)
    assert drop_p_value(0.60, 100, 0.8, 100, 0.05) == pytest.approx(0.0088, abs=5e-4)


def test_label_gates_weigh_the_number_of_trials() -> None:
    """The same drop is noise on 10 reviewed predictions and evidence on 1000."""
    drop = dataclasses.replace(GOOD, canary_precision=0.6, stable_precision=0.8)
    few = dataclasses.replace(drop, canary_reviewed=10)
    assert decide(10, few, CFG).action == Action.STEP
    assert decide(10, dataclasses.replace(drop, canary_reviewed=1000), CFG).action == Action.ROLLBACK
    # a drop no larger than the tolerated one never fails, however many trials; no trials, no verdict
    exact = dataclasses.replace(drop, canary_precision=0.75, canary_reviewed=10**6, stable_reviewed=10**6)
    assert drop_p_value(0.75, 10**6, 0.8, 10**6, 0.05) == pytest.approx(0.5)
    assert decide(10, exact, CFG).action == Action.STEP
    assert decide(10, dataclasses.replace(drop, canary_reviewed=0), CFG).action == Action.STEP
    # a canary that caught none of 20 frauds the stable caught 16 of: certain enough
    none_caught = dataclasses.replace(GOOD, canary_recall=0.0, canary_frauds=20, stable_frauds=20)
    assert decide(10, none_caught, CFG).action == Action.ROLLBACK
    nan = dataclasses.replace(GOOD, canary_recall=float("nan"), canary_frauds=0)
    assert decide(10, nan, CFG).action == Action.STEP


def test_label_gates_wait_for_labels() -> None:
    snap = dataclasses.replace(GOOD, canary_precision=0.1, labels=CFG.min_labels - 1)
    assert decide(10, snap, CFG).action == Action.STEP
    assert decide(10, dataclasses.replace(snap, labels=CFG.min_labels), CFG).action == Action.ROLLBACK


def test_schedule_hold_step_promote(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decide(10, dataclasses.replace(GOOD, canary_requests=99), CFG).action == Action.HOLD
    assert [decide(p, GOOD, CFG).percent for p in (0, 10, 25)] == [10, 25, 50]
    assert decide(50, GOOD, CFG).action == Action.PROMOTE
    monkeypatch.setenv("RELEARN_ROLLOUT_STEPS", "[5, 100]")
    monkeypatch.setenv("RELEARN_ROLLOUT_MAX_P99_SECONDS", "0.01")
    cfg = AnalysisSettings()
    assert (
        cfg.steps == [5, 100]
        and decide(0, dataclasses.replace(GOOD, canary_p99_seconds=0.0), cfg).percent == 5
    )
    assert decide(5, GOOD, cfg).action == Action.ROLLBACK


# --- no promotion without evidence ------------------------------------------------------------------
NO_LABELS = dataclasses.replace(
    GOOD, labels=0, canary_precision=None, stable_precision=None, canary_recall=None, stable_recall=None,
    canary_reviewed=0, stable_reviewed=0, canary_frauds=0, stable_frauds=0,
)  # fmt: skip


def _backtest(verdict: Verdict) -> Evidence:
    numbers = {"n": 1200, "positives": 40, "effect": 0.02, "lower": -0.01, "upper": 0.05, "confidence": 0.975}
    return Evidence("backtest", verdict, "1200 labelled predictions (40 fraud)", **numbers)


def test_a_gate_without_labels_is_unknown_and_holds_the_promotion() -> None:
    """The issue's run: labels 0, canary_precision None. The label gates are unknown, not passed."""
    early = decide(10, NO_LABELS, CFG)
    assert early.action is Action.STEP and "label gates canary-labels unknown" in early.reason
    held = decide(50, NO_LABELS, CFG)
    assert held.action is Action.HOLD and held.percent == 50
    assert "waiting for evidence before 100%: canary-labels unknown: 0 labelled canary predictions < 50" in (
        held.reason
    )
    assert held.evidence is None and [e.verdict for e in held.checked] == [Verdict.UNKNOWN]
    # labels without a fraud among them are no evidence either
    no_fraud = dataclasses.replace(NO_LABELS, labels=400, canary_reviewed=4, stable_reviewed=4)
    assert decide(50, no_fraud, CFG).action is Action.HOLD


def test_backtest_evidence_promotes_refutes_or_waits() -> None:
    calls = []

    def source(verdict: Verdict):
        return lambda: calls.append(verdict) or _backtest(verdict)

    promoted = decide(50, NO_LABELS, CFG, source(Verdict.PASSED))
    assert promoted.action is Action.PROMOTE and promoted.evidence.source == "backtest"
    assert "evidence: backtest passed: 1200 labelled predictions" in promoted.reason
    refuted = decide(50, NO_LABELS, CFG, source(Verdict.FAILED))
    assert refuted.action is Action.ROLLBACK and refuted.reason.startswith("backtest failed")
    waiting = decide(50, NO_LABELS, CFG, source(Verdict.UNKNOWN))
    assert waiting.action is Action.HOLD and "backtest unknown" in waiting.reason
    # the backtest is asked only for a step that needs evidence the canary's labels do not give
    assert decide(10, NO_LABELS, CFG, source(Verdict.PASSED)).action is Action.STEP
    assert decide(50, GOOD, CFG, source(Verdict.FAILED)).action is Action.PROMOTE
    assert calls == [Verdict.PASSED, Verdict.FAILED, Verdict.UNKNOWN]
    # the canary's own labels are evidence once min_labels are in: effect and interval recorded
    labels = decide(50, GOOD, CFG).evidence
    assert labels.source == "canary-labels" and labels.n == 100 and labels.effect == 0.0
    assert labels.lower < 0 < labels.upper and labels.confidence == CFG.backtest_confidence


def test_policy_names_the_steps_and_the_time_budget() -> None:
    strict = CFG.model_copy(update={"evidence_from_percent": 0})
    assert decide(10, NO_LABELS, strict).action is Action.HOLD, "every step needs evidence"
    only_labels = CFG.model_copy(update={"evidence_sources": ["canary_labels"]})
    ignored = decide(50, NO_LABELS, only_labels, lambda: _backtest(Verdict.PASSED))
    assert ignored.action is Action.HOLD, "a policy without backtests does not read one"
    budget = CFG.max_evidence_wait_seconds
    assert decide(50, NO_LABELS, CFG, waited_seconds=budget).action is Action.HOLD
    expired = decide(50, NO_LABELS, CFG, waited_seconds=budget + 1)
    assert expired.action is Action.ROLLBACK and expired.reason.startswith("no evidence of quality 336.0 h")
