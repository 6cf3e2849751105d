"""``python -m benchmarks.drift_response``: which retraining answers covariate drift (issue 21, item 6).

The demo's situation: a champion trained on 28 days before the onset of ``covariate_shift`` (legitimate
spending moves toward electronics and travel, prices x1.5); ``k`` days after the onset the loop retrains on
the 10-day window ending then, minus 2 days of label maturity, split as the demo's pipeline splits it
(75 % train, 10 % validation, 15 % test by time). Two retrainings, side by side in one run:

- from scratch on the window (the loop's answer to concept drift);
- warm-started from the champion (:mod:`relearn.model.warm`: the rows after the champion's plus 10 %
  replayed older rows, the champion's preprocessor, 2x the learning rate).

Each against the champion, by the gate's own rule (:func:`relearn.model.gate.paired_rule`): on the
window's test split, the evidence the gate has at training time (a fine-tuned champion by the pipeline's
warm rule: not worse by 0.02), and on the 14 days after the retraining, what a promotion would have bought
(by the default rule: a significant gain). Every option is also a
``RELEARN_BENCH_DRIFT_RESPONSE_<OPTION>``.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.table import Row, render
from benchmarks.worlds import labelled_rows, world_start

ONSET, MATURITY, WINDOW, AFTER = 30, 2, 10, 14  # days: the champion trains on [0, ONSET - MATURITY)


class DriftResponseBench(BaseSettings):
    """Warm start vs from scratch after covariate drift, judged by the promotion gate's rule."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_DRIFT_RESPONSE_",
        cli_kebab_case=True,
        cli_prog_name="python -m benchmarks.drift_response",
    )

    seeds: list[int] = Field([7, 11, 13], description="Generator and training seeds (one world each).")
    days_after_onset: list[int] = Field([6, 10], description="When the retraining runs (days after onset).")
    users: int = Field(3000, ge=100, description="Card holders of each world (the demo's).")
    scenario: str = Field("covariate_shift", description="Generator scenario.")

    def cli_cmd(self) -> None:
        """Run and print the table."""
        print(render(run(self)))


def _world(bench: DriftResponseBench, seed: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Point-in-time rows of a generated world (all labels known) and the onset."""
    onset = world_start() + timedelta(days=ONSET)
    days = ONSET + max(bench.days_after_onset) + AFTER
    return labelled_rows(days, bench.users, seed, bench.scenario, onset), pd.Timestamp(onset)


class _Days:
    """The rows of days ``[a, b)`` counted from the onset."""

    def __init__(self, rows: pd.DataFrame, onset: pd.Timestamp) -> None:
        self.rows, self.onset = rows, onset

    def __call__(self, a: float, b: float) -> pd.DataFrame:
        t = self.rows["event_timestamp"]
        return self.rows[(t >= self.onset + pd.Timedelta(days=a)) & (t < self.onset + pd.Timedelta(days=b))]


def _versus_champion(candidate, champion, rows: pd.DataFrame, warm: bool = False) -> tuple[bool, str]:
    """The gate's rule on ``rows``; ``warm``: a fine-tuned champion's (the pipeline's default -0.02)."""
    from relearn.model.evaluate import paired
    from relearn.model.gate import GateParams, describe, paired_rule
    from relearn.model.net import score
    from relearn.settings import ALERT_BUDGET

    params = GateParams(warm_min_improvement=-0.02).for_candidate(warm)
    both = [score(m.net, m.preprocessor, rows) for m in (candidate, champion)]
    failed, summary = paired_rule(paired(*both, rows, ALERT_BUDGET, params.n_boot, params.seed), params)
    return not failed, f"{describe(summary, params.confidence)}; {int(rows['label'].sum())} frauds"


def run(bench: DriftResponseBench) -> list[Row]:
    """One row per seed, retraining day and mode."""
    from relearn.model.train import TrainParams, time_split, train
    from relearn.model.warm import fine_tuning_rows

    out: list[Row] = []
    for seed in bench.seeds:
        rows, onset = _world(bench, seed)
        days = _Days(rows, onset)
        params = TrainParams(epochs=30, patience=4, lr=0.002, seed=seed, progress=False)
        champ_train, champ_val, _ = time_split(days(-ONSET, -MATURITY), 0.1, 0.0)
        champion = train(champ_train, champ_val, params)
        for k in bench.days_after_onset:
            train_df, val_df, test_df = time_split(days(k - WINDOW, k - MATURITY), 0.1, 0.15)
            scratch = train(train_df, val_df, params)
            tuned_rows, _, _ = fine_tuning_rows(train_df, onset - pd.Timedelta(days=MATURITY), 0.1, seed)
            warm_params = params.model_copy(update={"lr": params.lr * 2.0})
            warm = train(tuned_rows, val_df, warm_params, init=(champion.net, champion.preprocessor))
            for mode, model in (("from scratch", scratch), ("warm start", warm)):
                at_training, evidence = _versus_champion(model, champion, test_df, model is warm)
                later, truth = _versus_champion(model, champion, days(k, k + AFTER))
                out.append(
                    Row(
                        f"seed {seed}, day {k} after onset: {mode}",
                        f"{len(train_df):,} rows",
                        throughput=f"next {AFTER} d: {truth}",
                        ratio=f"test split: {evidence} ({'passed' if at_training else 'refused'})",
                        aim="a gain on the next days",
                        ok=later,
                    )
                )
    return out


if __name__ == "__main__":
    CliApp.run(DriftResponseBench)
