"""Thompson sampling between k model versions on a delayed reward, with a floor and a champion fallback.

The reward is Bernoulli per labelled fraud: caught (among the arm's alerts at the budget) or missed. At
equal alert budgets every arm pays the same review cost, so the money an arm saves is in the frauds it
catches. A fraud is known only when its chargeback arrives, days later: an outcome enters the posterior
only once its label has matured (decided more than ``maturity_s`` ago), never earlier, so the posterior
is not biased toward the arms whose frauds happen to be charged back first.

Routing follows each arm's posterior probability of being the best (what per-request Thompson draws
converge to), with at least ``min_share`` for every arm so a slow starter can still recover; with no
matured label for ``stale_s`` (labels stopped flowing) all traffic falls back to the champion. Cards map
onto the shares by their salted bucket, so a card keeps its arm while the shares stay put.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relearn.experiments.assignment import Shares, assign


def prob_best(
    successes: np.ndarray, failures: np.ndarray, rng: np.random.Generator, draws: int = 1000
) -> np.ndarray:
    """P(arm is best) under Beta(1 + s, 1 + f) posteriors, by Monte Carlo; last axis = arms."""
    s, f = np.asarray(successes, np.float64), np.asarray(failures, np.float64)
    samples = rng.beta(1 + s[..., None], 1 + f[..., None], (*s.shape, draws))
    best = samples.argmax(axis=-2)  # (..., draws)
    k = s.shape[-1]
    return (best[..., None, :] == np.arange(k)[:, None]).mean(axis=-1)


def with_floor(p: np.ndarray, min_share: float) -> np.ndarray:
    """Shares from P(best) with at least ``min_share`` for every arm (last axis = arms)."""
    k = p.shape[-1]
    return min_share + (1 - k * min_share) * p


@dataclass
class ThompsonRouter:
    """The live router: matured outcomes in, arm shares and each card's arm out.

    Args:
        arms: Model versions (k >= 2); ``champion`` is one of them.
        min_share: Floor of every arm's share (k * min_share < 1).
        maturity_s: Age at which an outcome's label counts as final.
        stale_s: Without a newly matured outcome for this long, route everything to the champion.
    """

    arms: Sequence[str]
    champion: str
    salt: str
    min_share: float = 0.05
    maturity_s: float = 7 * 86400.0
    stale_s: float = 3 * 86400.0
    seed: int = 0
    successes: np.ndarray = field(init=False)
    failures: np.ndarray = field(init=False)
    pending: list[tuple[float, int, bool]] = field(default_factory=list, init=False)
    last_matured: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(self.arms) < 2 or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"a bandit needs two or more distinct arms, got {list(self.arms)}")
        if self.champion not in self.arms:
            raise ValueError(f"champion {self.champion!r} is not among the arms {list(self.arms)}")
        if not 0 <= self.min_share * len(self.arms) < 1:
            raise ValueError(f"min_share {self.min_share} leaves nothing to learn with {len(self.arms)} arms")
        self.successes = np.zeros(len(self.arms))
        self.failures = np.zeros(len(self.arms))
        self._rng = np.random.default_rng(self.seed)

    def observe(self, arm: str, caught: bool, decided_at: float) -> None:
        """A labelled fraud of ``arm``'s traffic; it counts once matured."""
        self.pending.append((decided_at, list(self.arms).index(arm), bool(caught)))

    def mature(self, now: float) -> int:
        """Move the outcomes older than ``maturity_s`` into the posterior; how many moved."""
        cut = now - self.maturity_s
        ready = [o for o in self.pending if o[0] <= cut]
        self.pending = [o for o in self.pending if o[0] > cut]
        for _, i, caught in ready:
            (self.successes if caught else self.failures)[i] += 1
        if ready:
            self.last_matured = now
        return len(ready)

    def stale(self, now: float, started: float) -> bool:
        """No outcome has matured for ``stale_s`` (counted from ``started`` before the first one)."""
        since = self.last_matured if self.last_matured is not None else started + self.maturity_s
        return now - since > self.stale_s

    def shares(self, now: float, started: float) -> dict[str, float]:
        """Each arm's traffic share now (matures pending outcomes first)."""
        self.mature(now)
        if self.stale(now, started):
            return {a: float(a == self.champion) for a in self.arms}
        p = with_floor(prob_best(self.successes, self.failures, self._rng), self.min_share)
        return dict(zip(self.arms, p.tolist(), strict=True))

    def route(self, user_id: str | int, shares: dict[str, float]) -> str:
        """The card's arm under ``shares``: its salted bucket against the cumulative shares."""
        return assign(user_id, self.salt, Shares.of({a: shares[a] for a in self.arms}))

    def state(self) -> dict[str, Any]:
        """JSON-ready posterior counts (for the store and the metrics)."""
        return {
            "successes": dict(zip(self.arms, self.successes.tolist(), strict=True)),
            "failures": dict(zip(self.arms, self.failures.tolist(), strict=True)),
            "pending": len(self.pending),
        }


def simulate_bandit(
    recall: Sequence[float],
    *,
    frauds_per_day: int = 300,
    days: int = 90,
    delay_days: int = 7,
    min_share: float = 0.02,
    seeds: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Cumulative regret per seed: frauds missed beyond what the best arm would have missed, in expectation.

    For Thompson sampling on labels matured ``delay_days`` later, a fixed equal split and the oracle (all
    traffic on the best arm, regret 0). ``recall``: each arm's chance of catching a fraud.
    """
    if delay_days < 1:
        raise ValueError("labels mature a day after the decision at the earliest")
    rng = np.random.default_rng(seed)
    p = np.asarray(recall, np.float64)
    k = len(p)
    s, f = np.zeros((seeds, k)), np.zeros((seeds, k))
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    regret = np.zeros(seeds)
    for day in range(days):
        if day >= delay_days:  # the outcomes of day - delay_days have matured
            caught, total = pending[day - delay_days]
            s, f = s + caught, f + total - caught
        shares = with_floor(prob_best(s, f, rng, draws=200), min_share)
        total = rng.multinomial(frauds_per_day, shares)  # one row of arm counts per seed
        caught = rng.binomial(total, p)
        pending.append((caught, total))
        regret += (total * (p.max() - p)).sum(axis=1)
    equal = np.full(seeds, days * frauds_per_day * (p.max() - p.mean()))
    return {"thompson": regret, "equal_split": equal, "oracle": np.zeros(seeds)}
