"""The group-sequential alternative: O'Brien-Fleming-type boundaries by Lan-DeMets alpha spending.

Where the mixture SPRT may be looked at any time, forever, a group-sequential design fixes the looks in
advance (as fractions of the planned information, e.g. day k of K) and spends alpha over them: alpha / 2
on each side by ``2 - 2 Phi(z_{alpha/4} / sqrt(t))`` (Lan & DeMets 1983), almost nothing early and nearly
all of it at the last look. It is more powerful at the planned horizon, but a look outside the plan, or
running past it, voids the guarantee. Boundaries come from the recursive numerical integration of
Armitage, McPherson and Rowe (Jennison & Turnbull, *Group Sequential Methods*, ch. 19): the sub-density
of the score statistic that has not crossed yet is carried on a grid from look to look.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

GRID = 1001  # points per look: boundaries within 1e-3 of published tables
MAX_Z = 8.0  # a look allowed to spend less than P(|Z| > 8) ~ 1e-15 gets this boundary: it cannot cross


def obrien_fleming_spending(t: np.ndarray | float, alpha: float) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``t``: alpha/2 per side, Lan-DeMets O'Brien-Fleming."""
    t = np.asarray(t, np.float64)
    return 2 * (2 - 2 * norm.cdf(norm.isf(alpha / 4) / np.sqrt(t)))


def _crossing(b: float, grid: np.ndarray, mass: np.ndarray, sd: float) -> float:
    """Probability of not having crossed before and crossing ``+-b`` now (score scale)."""
    return float(np.sum(mass * (norm.sf((b - grid) / sd) + norm.cdf((-b - grid) / sd))))


def boundaries(fractions: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Two-sided z boundaries, one per look at the given increasing information fractions (last 1.0)."""
    t = np.asarray(fractions, np.float64)
    if np.any(np.diff(t) <= 0) or t[0] <= 0 or not np.isclose(t[-1], 1.0):
        raise ValueError(f"information fractions must increase to 1, got {t.tolist()}")
    spend = np.diff(obrien_fleming_spending(t, alpha), prepend=0.0)
    z = np.empty(len(t))
    z[0] = min(norm.isf(spend[0] / 2), MAX_Z)
    grid = np.linspace(-z[0] * np.sqrt(t[0]), z[0] * np.sqrt(t[0]), GRID)  # score S = Z sqrt(t)
    density = norm.pdf(grid, scale=np.sqrt(t[0]))
    for k in range(1, len(t)):
        sd = float(np.sqrt(t[k] - t[k - 1]))
        mass = density * np.gradient(grid)  # probability per grid point of not having crossed yet
        top = MAX_Z * np.sqrt(t[k])
        if _crossing(top, grid, mass, sd) >= spend[k]:
            b = top
        else:
            b = brentq(lambda b, m=mass, g=grid, s=sd, a=spend[k]: _crossing(b, g, m, s) - a, 1e-6, top)
        z[k] = b / np.sqrt(t[k])
        new_grid = np.linspace(-b, b, GRID)
        density, grid = (norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd) @ mass, new_grid
    return z
