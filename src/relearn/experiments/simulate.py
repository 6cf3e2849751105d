"""Simulated experiments on the money view, many at once (numpy), for the test's validity and power.

A card's loss over the experiment is ``review_cost`` if it was alerted on, plus its missed fraud's amount
and the ``chargeback_fee`` if a fraud of it was missed: rare, heavy-tailed (log-normal amounts) — the
shape that makes a normal approximation earn its burn-in. Each simulated day brings fresh cards to every
arm; an arm's day is drawn as counts of the four (alerted, missed) cells plus one amount per missed fraud,
so a thousand experiments of 100k cards a day take seconds. The statistics are the package's own
(:mod:`relearn.experiments.sequential`), fed with the running sums a real experiment would have.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import ttest_ind_from_stats

from relearn.experiments.group_sequential import boundaries
from relearn.experiments.sequential import ArmStats, Plan, plan, sequential_p_values, variance_of_difference


@dataclass(frozen=True)
class Traffic:
    """One arm's daily cards and the rates behind its loss per card."""

    cards_per_day: int = 50_000  # per arm
    alert_rate: float = 0.02
    missed_rate: float = 0.004
    amount_log_mean: float = 4.5  # log-normal amounts: median ~90, mean ~148
    amount_log_sd: float = 1.0
    review_cost: float = 5.0
    chargeback_fee: float = 15.0

    def _moments(self) -> tuple[float, float]:
        mu, s2 = self.amount_log_mean, self.amount_log_sd**2
        ea, ea2 = math.exp(mu + s2 / 2), math.exp(2 * mu + 2 * s2)
        return ea + self.chargeback_fee, ea2 + 2 * self.chargeback_fee * ea + self.chargeback_fee**2

    @property
    def mean(self) -> float:
        """Expected loss per card."""
        m1, _ = self._moments()
        return self.alert_rate * self.review_cost + self.missed_rate * m1

    @property
    def std(self) -> float:
        """Standard deviation of the loss per card."""
        m1, m2 = self._moments()
        q, p, c = self.alert_rate, self.missed_rate, self.review_cost
        return math.sqrt(q * c * c + p * m2 + 2 * c * q * p * m1 - self.mean**2)

    def with_relative_effect(self, effect: float) -> Traffic:
        """The same traffic with the mean loss changed by ``effect`` (-0.1: 10 % less) via missed frauds."""
        m1, _ = self._moments()
        target = (1 + effect) * self.mean
        return replace(self, missed_rate=(target - self.alert_rate * self.review_cost) / m1)


def daily_sums(traffic: Traffic, sims: int, days: int, rng: np.random.Generator) -> np.ndarray:
    """``(3, sims, days)``: count, sum and sum of squares of the loss per card of each simulated day."""
    q, p, c = traffic.alert_rate, traffic.missed_rate, traffic.review_cost
    cells = rng.multinomial(
        traffic.cards_per_day, [q * (1 - p), (1 - q) * p, q * p, (1 - q) * (1 - p)], (sims, days)
    )
    alerted_only, missed_only, both = cells[..., 0], cells[..., 1], cells[..., 2]
    missed = (missed_only + both).ravel()
    loss = (
        rng.lognormal(traffic.amount_log_mean, traffic.amount_log_sd, missed.sum()) + traffic.chargeback_fee
    )
    # One slot per (sim, day); the first missed_only of a slot's amounts are cards without an alert.
    slot = np.repeat(np.arange(missed.size), missed)
    rank = np.arange(missed.sum()) - np.repeat(np.cumsum(missed) - missed, missed)
    loss = loss + np.where(rank >= np.repeat(missed_only.ravel(), missed), c, 0.0)
    total = np.bincount(slot, loss, missed.size).reshape(sims, days) + c * alerted_only
    squares = np.bincount(slot, loss * loss, missed.size).reshape(sims, days) + c * c * alerted_only
    count = np.full((sims, days), traffic.cards_per_day, np.float64)
    return np.stack([count, total, squares])


def running(sums: np.ndarray) -> ArmStats:
    """Cumulative statistics after each day."""
    n, total, squares = np.cumsum(sums, axis=-1)
    return ArmStats.from_sums(n, total, squares)


@functools.lru_cache(maxsize=16)
def _daily_boundaries(days: int, alpha: float) -> np.ndarray:
    return boundaries(np.arange(1, days + 1) / days, alpha)


def simulate(
    control: Traffic,
    treatment: Traffic,
    *,
    sims: int,
    days: int,
    tau: float,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """``sims`` experiments looked at daily for ``days`` days: the day each test first rejects.

    Days are 1-based (0: never); the tests are the mixture SPRT, a naive Welch t-test at every look and the
    group-sequential design planned for exactly these looks (equal daily traffic: fractions k / days).
    """
    rng = np.random.default_rng(seed)
    c, t = running(daily_sums(control, sims, days, rng)), running(daily_sums(treatment, sims, days, rng))
    p_msprt = sequential_p_values(c, t, tau)
    naive = ttest_ind_from_stats(
        t.mean, np.sqrt(t.var), t.n, c.mean, np.sqrt(c.var), c.n, equal_var=False
    ).pvalue

    z = (t.mean - c.mean) / np.sqrt(variance_of_difference(c, t))
    gst = _daily_boundaries(days, alpha)

    def first(reject: np.ndarray) -> np.ndarray:
        return np.where(reject.any(axis=-1), reject.argmax(axis=-1) + 1, 0)

    effect = t.mean - c.mean
    return {
        "msprt_day": first(p_msprt <= alpha),
        "naive_day": first(naive <= alpha),
        "group_sequential_day": first(np.abs(z) >= gst),
        "fixed_horizon_reject": naive[:, -1] <= alpha,
        "effect_sign": np.sign(effect[:, -1]),
    }


def planned(
    control: Traffic, *, alpha: float = 0.05, power: float = 0.8, effect: float = 0.1, **kw: Any
) -> Plan:
    """The plan printed at start for this traffic (two equal arms)."""
    return plan(
        2 * control.cards_per_day,
        control.mean,
        control.std,
        alpha=alpha,
        power=power,
        relative_effect=effect,
        **kw,
    )


def figures(sims: int = 1000, days: int = 30, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """The validity, power and bandit figures the README quotes, from one run (seeded)."""
    from relearn.experiments.bandit import simulate_bandit

    traffic = Traffic()
    the_plan = planned(traffic, alpha=alpha)
    aa = simulate(traffic, traffic, sims=sims, days=days, tau=the_plan.tau, alpha=alpha, seed=seed)
    duration = the_plan.days_for_power or days
    ab = simulate(
        traffic,
        traffic.with_relative_effect(-0.1),
        sims=sims,
        days=duration,
        tau=the_plan.tau,
        alpha=alpha,
        seed=seed + 1,
    )
    found = ab["msprt_day"] > 0
    bandit = simulate_bandit([0.60, 0.65, 0.70], seeds=200, seed=seed)
    return {
        "experiments": sims,
        "looks": days,
        "plan": the_plan.describe(),
        "aa_false_positive_rate": {
            "msprt_daily_looks": float(np.mean(aa["msprt_day"] > 0)),
            "t_test_daily_looks": float(np.mean(aa["naive_day"] > 0)),
            "t_test_single_look": float(np.mean(aa["fixed_horizon_reject"])),
            "group_sequential_planned_looks": float(np.mean(aa["group_sequential_day"] > 0)),
        },
        "power_minus_10pct": {
            "days": duration,
            "found": float(found.mean()),
            "found_group_sequential": float(np.mean(ab["group_sequential_day"] > 0)),
            "mean_stop_day": float(ab["msprt_day"][found].mean()) if found.any() else None,
        },
        "bandit_regret_frauds": {k: float(v.mean()) for k, v in bandit.items()},
    }
