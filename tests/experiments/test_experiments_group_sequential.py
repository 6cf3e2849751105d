"""The group-sequential alternative: published boundaries, alpha over planned looks, the price of the plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relearn.experiments.group_sequential import boundaries, obrien_fleming_spending
from relearn.experiments.simulate import Traffic, planned, simulate

ALPHA, SIMS = 0.05, 1000
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)


def test_boundaries_match_the_published_table():
    """Lan-DeMets O'Brien-Fleming, 5 equally spaced looks, 0.025 per side (gsDesign sfLDOF, rpact asOF)."""
    assert boundaries([0.2, 0.4, 0.6, 0.8, 1.0], ALPHA) == pytest.approx(
        [4.877, 3.357, 2.680, 2.290, 2.031], abs=2e-3
    )
    assert boundaries([1.0], ALPHA) == pytest.approx([1.95996], abs=1e-4)  # one look: the fixed-horizon test
    assert obrien_fleming_spending(1.0, ALPHA) == pytest.approx(ALPHA)
    with pytest.raises(ValueError, match="increase to 1"):
        boundaries([0.5, 0.4, 1.0])


def test_planned_daily_looks_spend_alpha_and_buy_power():
    """A/A over 30 planned daily looks rejects in ~alpha of runs (the mSPRT in far fewer: it is conservative);
    at the planned duration the design finds a 10 % cut more often than the mSPRT."""
    traffic = Traffic()
    the_plan = planned(traffic)
    aa = simulate(traffic, traffic, sims=SIMS, days=30, tau=the_plan.tau, alpha=ALPHA, seed=21)
    assert abs(np.mean(aa["group_sequential_day"] > 0) - ALPHA) <= MC
    ab = simulate(
        traffic,
        traffic.with_relative_effect(-0.1),
        sims=SIMS,
        days=the_plan.days_for_power,
        tau=the_plan.tau,
        seed=22,
    )
    assert np.mean(ab["group_sequential_day"] > 0) > np.mean(ab["msprt_day"] > 0) + 0.05
