"""Canary analysis decisions: each gate at and just past its threshold, and the step schedule."""

from __future__ import annotations

import dataclasses

import pytest

from relearn.rollout.analysis import Action, AnalysisSettings, Snapshot, decide

CFG = AnalysisSettings()
GOOD = Snapshot(
    canary_requests=500, canary_error_rate=0.0, stable_error_rate=0.0, canary_p99_seconds=0.05,
    score_divergence=0.01, canary_drift_share=0.0, labels=100, canary_precision=0.9, stable_precision=0.9,
    canary_recall=0.8, stable_recall=0.8,
)  # fmt: skip


@pytest.mark.parametrize(
    ("field", "at_limit", "past"),
    [
        ("canary_error_rate", 0.005, 0.0101),
        ("canary_p99_seconds", 0.25, 0.2501),
        ("score_divergence", 0.1, 0.1001),
        ("canary_drift_share", 0.5, 0.51),
        ("canary_precision", 0.85, 0.849),
        ("canary_recall", 0.75, 0.749),
    ],
)
def test_each_gate_edge(field: str, at_limit: float, past: float) -> None:
    assert decide(10, dataclasses.replace(GOOD, **{field: at_limit}), CFG).action == Action.STEP
    bad = decide(10, dataclasses.replace(GOOD, **{field: past}), CFG)
    assert bad.action == Action.ROLLBACK and bad.percent == 0 and bad.reason


def test_error_rate_increase_over_stable() -> None:
    snap = dataclasses.replace(GOOD, canary_error_rate=0.008, stable_error_rate=0.002)
    assert decide(25, snap, CFG).action == Action.ROLLBACK
    assert decide(25, dataclasses.replace(snap, stable_error_rate=0.004), CFG).action == Action.STEP


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
