"""The always-valid test, checked over many simulated experiments looked at every day.

Each simulation runs 1000 experiments (independent draws) of heavy-tailed loss per card through the
package's own statistics. Monte Carlo sd of a rate near 0.05 over 1000 runs is 0.007.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from relearn.experiments.sequential import (
    ArmStats,
    half_width,
    log_likelihood_ratio,
    look,
    plan,
    sequential_p_values,
)
from relearn.experiments.simulate import Traffic, daily_sums, planned, running, simulate

ALPHA, SIMS, DAYS = 0.05, 1000, 30
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)


@pytest.mark.parametrize("cards_per_day", [50_000, 10_000])
def test_aa_false_positive_rate_with_daily_looks(cards_per_day):
    """A/A: however often it is peeked at, the mSPRT declares a winner in at most alpha of experiments."""
    traffic = Traffic(cards_per_day=cards_per_day)
    runs = simulate(traffic, traffic, sims=SIMS, days=DAYS, tau=planned(traffic).tau, alpha=ALPHA, seed=11)
    fpr = float(np.mean(runs["msprt_day"] > 0))
    assert fpr <= ALPHA + MC, fpr


def test_naive_repeated_t_tests_inflate_false_positives():
    """The contrast: a t-test at every daily look 'finds' A/A winners far above alpha; one look does not."""
    traffic = Traffic()
    runs = simulate(traffic, traffic, sims=SIMS, days=DAYS, tau=planned(traffic).tau, alpha=ALPHA, seed=12)
    assert np.mean(runs["naive_day"] > 0) > 3 * ALPHA
    assert abs(np.mean(runs["fixed_horizon_reject"]) - ALPHA) <= MC
    assert np.mean(runs["msprt_day"] > 0) < np.mean(runs["naive_day"] > 0) / 3


def test_power_within_the_planned_duration():
    """A challenger losing 10 % less is found in >= 80 % of runs within the days the plan printed."""
    control = Traffic()
    the_plan = planned(control, effect=0.1, power=0.8)
    assert the_plan.days_for_power is not None and the_plan.days_for_power <= DAYS
    runs = simulate(
        control,
        control.with_relative_effect(-0.1),
        sims=SIMS,
        days=the_plan.days_for_power,
        tau=the_plan.tau,
        seed=13,
    )
    found = runs["msprt_day"] > 0
    assert found.mean() >= 0.8, found.mean()
    assert (runs["effect_sign"][found] < 0).all()  # the winner is the challenger
    assert runs["msprt_day"][found].mean() <= the_plan.expected_days


def test_confidence_sequence_covers_the_true_effect_at_every_look():
    control = Traffic()
    treatment = control.with_relative_effect(-0.1)
    tau = planned(control).tau
    rng = np.random.default_rng(14)
    c, t = running(daily_sums(control, SIMS, DAYS, rng)), running(daily_sums(treatment, SIMS, DAYS, rng))
    diff = t.mean - c.mean
    h = half_width(c.var / c.n + t.var / t.n, tau, ALPHA)
    lower, upper = np.maximum.accumulate(diff - h, axis=1), np.minimum.accumulate(diff + h, axis=1)
    truth = treatment.mean - control.mean
    covered = ((lower <= truth) & (truth <= upper)).all(axis=1)
    assert covered.mean() >= 1 - ALPHA - MC


def test_look_by_look_equals_the_vectorized_test():
    rng = np.random.default_rng(5)
    a, b = rng.exponential(1.0, 6000), rng.exponential(1.1, 6000)
    previous, p_values = None, []
    for end in range(500, 6001, 500):
        previous = look(ArmStats.of(a[:end]), ArmStats.of(b[:end]), tau=0.1, alpha=ALPHA, previous=previous)
        p_values.append(previous.p_value)
    ends = np.arange(500, 6001, 500)
    sums = [np.array([ends, np.cumsum(x)[ends - 1], np.cumsum(x * x)[ends - 1]]) for x in (a, b)]
    vectorized = sequential_p_values(ArmStats.from_sums(*sums[0]), ArmStats.from_sums(*sums[1]), tau=0.1)
    assert np.allclose(p_values, vectorized, rtol=1e-6, atol=1e-12)
    assert (
        previous.significant and previous.lower > 0 and previous.effect == pytest.approx(b.mean() - a.mean())
    )
    assert np.all(np.diff(p_values) <= 0)  # always-valid p-values never rise


def test_plan_scales_with_traffic():
    small, large = plan(20_000, 0.75, 16.0), plan(200_000, 0.75, 16.0)
    assert large.days_for_power is not None and large.days_for_power == 14
    assert small.days_for_power is None  # beyond max_days: said so, not a made-up number
    assert large.mde_at_max_days < small.mde_at_max_days
    assert "more than 60 days" in small.describe() and "14 days" in large.describe()
    assert 0.04 < large.mde_at_max_days < 0.1 < small.mde_at_max_days
    with pytest.raises(ValueError, match="positive"):
        plan(0, 0.75, 16.0)


@pytest.mark.parametrize(("diff", "v", "tau"), [(0.0, 0.01, 0.1), (0.05, 0.001, 0.075), (-0.3, 0.02, 0.5)])
def test_likelihood_ratio_is_the_normal_mixture(diff, v, tau):
    """The closed form equals the mixture of normal likelihood ratios integrated numerically."""
    from scipy.integrate import quad
    from scipy.stats import norm

    ratio = quad(
        lambda theta: (
            norm.pdf(diff, theta, math.sqrt(v)) / norm.pdf(diff, 0, math.sqrt(v)) * norm.pdf(theta, 0, tau)
        ),
        -12 * tau,
        12 * tau,
        points=[diff],
    )[0]
    assert math.exp(log_likelihood_ratio(diff, v, tau)) == pytest.approx(ratio, rel=1e-6)
    h = half_width(v, tau, ALPHA)  # the confidence sequence's edges are where Lambda reaches 1 / alpha
    assert log_likelihood_ratio(h, v, tau) == pytest.approx(math.log(1 / ALPHA))


def test_simulated_cards_have_the_planned_moments():
    traffic = Traffic(cards_per_day=20_000)
    n, total, squares = daily_sums(traffic, 100, 10, np.random.default_rng(2)).sum(axis=(1, 2))
    assert total / n == pytest.approx(traffic.mean, rel=0.01)
    assert math.sqrt(squares / n - (total / n) ** 2) == pytest.approx(traffic.std, rel=0.03)
    assert traffic.with_relative_effect(-0.1).mean == pytest.approx(0.9 * traffic.mean)
