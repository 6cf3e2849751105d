"""The experiment's result: decision, JSON for the audit trail and the cumulative-effect plot."""

from __future__ import annotations

import json

import numpy as np

from relearn.experiments.guardrails import ArmHealth, check
from relearn.experiments.result import Decision, decide, plot_effect
from relearn.experiments.sequential import ArmStats, look
from relearn.experiments.simulate import Traffic, daily_sums, planned, running


def history(effect: float, days: int, seed: int = 3):
    """One simulated experiment looked at daily through look()."""
    control = Traffic()
    rng = np.random.default_rng(seed)
    c = running(daily_sums(control, 1, days, rng))
    t = running(daily_sums(control.with_relative_effect(effect), 1, days, rng))
    tau, looks, previous = planned(control).tau, [], None
    for d in range(days):
        arm = [ArmStats(s.n[0, d], s.mean[0, d], s.var[0, d]) for s in (c, t)]
        previous = look(arm[0], arm[1], tau=tau, alpha=0.05, previous=previous)
        looks.append(previous)
    return looks


def test_winner_with_interval_json_and_plot(tmp_path):
    looks = history(-0.3, 20)
    result = decide("exp-1", "v7", "v8", looks, days=20, max_days=60, arms={"v7": {"loss": 1.0}})
    assert result.decision == Decision.WINNER and result.winner == "v8"
    assert result.upper < 0 and result.lower <= result.effect <= result.upper
    assert type(result.lower) is float and type(result.upper) is float
    assert result.samples == {"v7": 1_000_000, "v8": 1_000_000}
    record = json.loads(json.dumps(result.as_dict()))
    assert record["decision"] == "winner" and record["arms"] == {"v7": {"loss": 1.0}}
    png = plot_effect(looks, list(range(1, 21)), tmp_path / "report" / "effect.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_no_difference_at_the_time_limit_and_running_before():
    looks = history(0.0, 10, seed=4)
    assert not any(h.significant for h in looks)
    assert decide("e", "a", "b", looks, days=5, max_days=10).decision == Decision.RUNNING
    done = decide("e", "a", "b", looks, days=10, max_days=10)
    assert done.decision == Decision.NO_DIFFERENCE and done.winner is None and done.lower < 0 < done.upper


def test_guardrails_win_over_the_test():
    stop = check([ArmHealth("b", requests=1000, errors=100, p99_seconds=0.01)])
    result = decide("e", "a", "b", history(-0.3, 20), days=20, max_days=60, guardrails=stop)
    assert result.decision == Decision.STOPPED and result.winner is None
    assert result.breaches == ["b: error_rate 0.1 > 0.01"]
