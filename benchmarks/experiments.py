"""``python -m benchmarks.experiments``: what the experiments' statistics guarantee (issue 19), one table.

Over simulated experiments with the real statistics code (:mod:`relearn.experiments.simulate`, which runs
:mod:`relearn.experiments.sequential` and :mod:`relearn.experiments.group_sequential` on heavy-tailed loss
per card at the plan's traffic):

* validity: A/A experiments (both arms the same model) looked at every simulated day; the share declaring a
  winner must stay at or below alpha. A t-test looked at daily is shown beside it (what peeking costs);
* power: a challenger that truly cuts the loss per card by 10 % must be found in at least 80 % of runs
  within the duration the plan prints at start;
* bandit: cumulative regret (frauds missed beyond the best arm) of Thompson sampling on rewards that mature
  ``delay_days`` later, 3 arms, against a fixed equal split and the oracle (all traffic on the best arm);
  the aim is at most half the equal split's, on average and at the 95th percentile over seeds.

The default run takes well under a minute on 2 cores.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.table import Row, render


class ExperimentsBench(BaseSettings):
    """Validity, power and bandit regret over simulated experiments; one table."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_EXPERIMENTS_",
        cli_kebab_case=True,
        cli_prog_name="python -m benchmarks.experiments",
    )

    experiments: int = Field(1000, ge=200, description="Simulated experiments per A/A and A/B figure.")
    days: int = Field(30, ge=7, description="Daily looks of the A/A experiments.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Always-valid false positive rate.")
    bandit_seeds: int = Field(200, ge=50, description="Simulated bandits.")
    recall: list[float] = Field([0.60, 0.65, 0.70], description="Each bandit arm's recall (3 or more arms).")
    delay_days: int = Field(7, ge=1, description="Days before a bandit's reward (the chargeback) matures.")
    seed: int = 0

    def cli_cmd(self) -> None:
        """Run and print the table."""
        print(render(run(self)))


def run(cfg: ExperimentsBench) -> list[Row]:
    """The table's rows (A/A, power, bandit), each with its aim."""
    from relearn.experiments.bandit import simulate_bandit
    from relearn.experiments.simulate import Traffic, planned, simulate

    traffic = Traffic()
    plan = planned(traffic, alpha=cfg.alpha)
    size = f"{cfg.experiments} x {cfg.days} daily looks"
    start = time.perf_counter()
    aa = simulate(
        traffic, traffic, sims=cfg.experiments, days=cfg.days, tau=plan.tau, alpha=cfg.alpha, seed=cfg.seed
    )
    aa_s = time.perf_counter() - start
    duration = plan.days_for_power or cfg.days
    start = time.perf_counter()
    ab = simulate(
        traffic,
        traffic.with_relative_effect(-0.1),
        sims=cfg.experiments,
        days=duration,
        tau=plan.tau,
        alpha=cfg.alpha,
        seed=cfg.seed + 1,
    )
    ab_s = time.perf_counter() - start
    fp = {
        "mSPRT, every day": float(np.mean(aa["msprt_day"] > 0)),
        "group-sequential, planned days": float(np.mean(aa["group_sequential_day"] > 0)),
        "t-test, every day (peeking)": float(np.mean(aa["naive_day"] > 0)),
        "t-test, one look at the end": float(np.mean(aa["fixed_horizon_reject"])),
    }
    rows = [
        Row(
            f"A/A false positives: {name}",
            size,
            aa_s,
            ratio=f"{rate:.3f}",
            aim=f"<= {cfg.alpha:g}" if "peeking" not in name else "",
            ok=rate <= cfg.alpha if "peeking" not in name else None,
            value=rate,
        )
        for name, rate in fp.items()
    ]
    for name, found in (
        ("mSPRT", float(np.mean(ab["msprt_day"] > 0))),
        ("group-sequential", float(np.mean(ab["group_sequential_day"] > 0))),
    ):
        rows.append(
            Row(
                f"power, -10 % loss/card within the planned {duration} days: {name}",
                f"{cfg.experiments} experiments",
                ab_s,
                ratio=f"{found:.3f}",
                aim=">= 0.8",
                ok=found >= 0.8,
                value=found,
            )
        )
    start = time.perf_counter()
    regret = simulate_bandit(cfg.recall, seeds=cfg.bandit_seeds, delay_days=cfg.delay_days, seed=cfg.seed)
    bandit_s = time.perf_counter() - start
    equal = regret["equal_split"]
    size = f"{cfg.bandit_seeds} seeds, {len(cfg.recall)} arms, labels {cfg.delay_days} d late"
    for name, values in regret.items():
        mean, p95 = float(values.mean()), float(np.percentile(values, 95))
        vs_equal = mean / float(equal.mean()) if equal.mean() > 0 else float("nan")
        is_thompson = name == "thompson"
        ok = mean <= 0.5 * equal.mean() and p95 <= 0.5 * np.percentile(equal, 95) if is_thompson else None
        rows.append(
            Row(
                f"bandit regret (frauds missed): {name.replace('_', ' ')}",
                size,
                bandit_s,
                throughput=f"mean {mean:.0f}, p95 {p95:.0f}",
                ratio=f"{vs_equal:.2f}x equal split",
                aim="<= 0.5x equal split" if is_thompson else "",
                ok=ok,
                value=mean,
            )
        )
    return rows


if __name__ == "__main__":
    CliApp.run(ExperimentsBench)
