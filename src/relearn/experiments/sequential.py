"""An always-valid test of two arms' mean loss per card: the mixture sequential probability ratio test.

Johari, Pekelis, Koomen, Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations
Research, 2022). With the difference of the arms' means ``d`` (treatment minus control), its variance
``V = var_c / n_c + var_t / n_t`` and a normal mixing distribution ``N(0, tau^2)`` over the true
difference, the likelihood ratio against "no difference" is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))),

a non-negative martingale under the null, so by Ville's inequality it ever exceeds ``1 / alpha`` with
probability at most ``alpha``, however often it is looked at. The always-valid p-value is the running
minimum of ``1 / Lambda``; the confidence sequence (the differences not rejected) is ``d`` plus or minus
:func:`half_width`, intersected over the looks. ``tau`` must be fixed before the data: the plan sets it to
the effect the experiment is sized for. The normal approximation of the means (CLT, estimated variances)
is why each arm needs ``min_units`` cards before the test counts.

Every function takes numpy arrays as well as scalars, so the simulations over seeds run the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm's units: count, mean and (sample) variance."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: np.ndarray) -> ArmStats:
        """From the units' values."""
        values = np.asarray(values, np.float64)
        return cls(len(values), float(values.mean()), float(values.var(ddof=1)) if len(values) > 1 else 0.0)

    @classmethod
    def from_sums(cls, n: Any, total: Any, squares: Any) -> ArmStats:
        """From count, sum and sum of squares (arrays allowed: running sums over looks)."""
        n = np.asarray(n, np.float64)
        mean = np.asarray(total, np.float64) / n
        var = np.maximum(np.asarray(squares, np.float64) - n * mean**2, 0.0) / np.maximum(n - 1, 1)
        return cls(n, mean, var)  # type: ignore[arg-type]


def variance_of_difference(control: ArmStats, treatment: ArmStats) -> Any:
    """``V``: the variance of the difference of the two means."""
    return np.asarray(control.var) / control.n + np.asarray(treatment.var) / treatment.n


def log_likelihood_ratio(diff: Any, v: Any, tau: float) -> Any:
    """``log Lambda`` of the normal-mixture SPRT for an observed difference ``diff`` with variance ``v``."""
    t2 = tau * tau
    v = np.maximum(np.asarray(v, np.float64), 1e-300)
    return 0.5 * np.log(v / (v + t2)) + t2 * np.square(diff) / (2 * v * (v + t2))


def half_width(v: Any, tau: float, alpha: float) -> Any:
    """Half-width of the (1 - alpha) confidence sequence at variance ``v``: where Lambda equals 1/alpha."""
    t2 = tau * tau
    v = np.asarray(v, np.float64)
    return np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))


@dataclass(frozen=True)
class Look:
    """The test after one look: the estimate, the always-valid p-value and confidence sequence."""

    n_control: int
    n_treatment: int
    mean_control: float
    mean_treatment: float
    effect: float  # treatment minus control, in loss per card
    relative_effect: float | None
    p_value: float  # always valid: running minimum over looks
    lower: float  # the confidence sequence: running intersection over looks
    upper: float
    significant: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def look(
    control: ArmStats, treatment: ArmStats, tau: float, alpha: float, previous: Look | None = None
) -> Look:
    """Update the test with the arms' statistics now (cumulative since the start)."""
    diff = treatment.mean - control.mean
    v = float(variance_of_difference(control, treatment))
    p = float(min(1.0, math.exp(-float(log_likelihood_ratio(diff, v, tau))))) if v > 0 else 1.0
    h = float(half_width(v, tau, alpha)) if v > 0 else math.inf
    lower, upper = diff - h, diff + h
    if previous is not None:
        p = min(p, previous.p_value)
        lower, upper = max(lower, previous.lower), min(upper, previous.upper)
    return Look(
        n_control=int(control.n),
        n_treatment=int(treatment.n),
        mean_control=float(control.mean),
        mean_treatment=float(treatment.mean),
        effect=float(diff),
        relative_effect=float(diff / control.mean) if control.mean else None,
        p_value=p,
        lower=float(lower),
        upper=float(upper),
        significant=p <= alpha,
    )


def sequential_p_values(control: ArmStats, treatment: ArmStats, tau: float) -> np.ndarray:
    """Always-valid p-values over looks (last axis), from running statistics arrays."""
    diff = np.asarray(treatment.mean) - np.asarray(control.mean)
    llr = log_likelihood_ratio(diff, variance_of_difference(control, treatment), tau)
    return np.minimum.accumulate(np.minimum(1.0, np.exp(-llr)), axis=-1)


@dataclass(frozen=True)
class Plan:
    """What an experiment can find and how long it takes, printed at start."""

    units_per_day: float
    control_share: float
    base_mean: float
    base_std: float
    alpha: float
    power: float
    relative_effect: float
    tau: float
    max_days: int
    lag_days: float
    days_for_power: int | None  # first day the planned effect is found with probability >= power
    expected_days: float  # upper bound of the expected stopping day under the planned effect (capped)
    mde_at_max_days: float  # smallest relative effect found with the power by max_days

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def describe(self) -> str:
        """One paragraph for the operator."""
        when = (
            f"{self.days_for_power} days (expected stop <= {self.expected_days:.1f} days)"
            if self.days_for_power
            else f"more than {self.max_days} days"
        )
        return (
            f"{self.units_per_day:.0f} cards/day, base loss/card {self.base_mean:.3f} "
            f"(sd {self.base_std:.3f}): "
            f"a {self.relative_effect:.0%} change is found with {self.power:.0%} power within {when}; "
            "minimum detectable effect by day "
            f"{self.max_days}: {self.mde_at_max_days:.1%} (always-valid alpha {self.alpha})."
        )


def detection_probability(effect: Any, v: Any, tau: float, alpha: float) -> Any:
    """Probability that a look at variance ``v`` alone crosses the boundary at a true difference ``effect``.

    A lower bound of the chance of having stopped by then: earlier looks only add to it.
    """
    sd = np.sqrt(v)
    h = half_width(v, tau, alpha)
    return norm.sf((h - effect) / sd) + norm.cdf((-h - effect) / sd)


def plan(
    units_per_day: float,
    base_mean: float,
    base_std: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    relative_effect: float = 0.1,
    control_share: float = 0.5,
    max_days: int = 60,
    treatment_std: float | None = None,
    lag_days: float = 0.0,
) -> Plan:
    """Size an experiment from its traffic (cards per day over both arms), the base loss per card and its sd.

    ``tau`` (the mixture's scale) is the planned absolute effect: the test is most sensitive near it.
    ``lag_days``: a card counts this long after it enrolled (its window and its labels' maturity), so the
    cards seen by day d are those enrolled by day d - lag_days.
    """
    if units_per_day <= 0 or base_mean <= 0 or base_std <= 0:
        raise ValueError("traffic, base mean and sd must be positive")
    tau = relative_effect * base_mean
    sd_t = base_std if treatment_std is None else treatment_std
    days = np.arange(1, max_days + 1, dtype=np.float64)
    enrolled = np.maximum(days - lag_days, 1e-9)  # ~0 cards before the first ones count: no detection
    n_c, n_t = units_per_day * enrolled * control_share, units_per_day * enrolled * (1 - control_share)
    v = base_std**2 / n_c + sd_t**2 / n_t
    prob = detection_probability(tau, v, tau, alpha)
    reached = np.flatnonzero(prob >= power)
    # P(T > d) <= 1 - P(cross at d): summing gives an upper bound of E[min(T, max_days)].
    expected = float(1 + np.sum(1 - prob[:-1]))
    v_end = v[-1]
    mde = float((half_width(v_end, tau, alpha) + norm.ppf(power) * math.sqrt(v_end)) / base_mean)
    return Plan(
        units_per_day=units_per_day,
        control_share=control_share,
        base_mean=base_mean,
        base_std=base_std,
        alpha=alpha,
        power=power,
        relative_effect=relative_effect,
        tau=tau,
        max_days=max_days,
        days_for_power=int(days[reached[0]]) if len(reached) else None,
        lag_days=lag_days,
        expected_days=expected,
        mde_at_max_days=mde,
    )
