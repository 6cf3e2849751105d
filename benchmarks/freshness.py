"""``python -m benchmarks.freshness``: the value of data freshness (issue 21, item 5).

The experiment of *Designing Machine Learning Systems* (ch. 9): models trained on windows of the same length
that end 1, 3, 7 and 14 days before a test week, scored on that week; the quality curve says how much a
fresher model is worth, and so how often to retrain. Run for the default world and for a drift scenario
(``concept_drift`` from a week before the test week: only the fresher windows see the new fraud pattern).
Labels are the generator's ground truth (all chargebacks known), so the curve is the value of fresh data
itself; in production the freshest days' labels are still in flight. Each model is trained from scratch by
:func:`relearn.model.train.train` (early stopping on the window's last 15 %); PR-AUC and recall at the
alert budget on the test week, averaged over ``seeds`` worlds. Prints one table.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.table import Row, render
from benchmarks.worlds import labelled_rows, world_start

WARM_UP = 7  # days before the first training row: the entity windows fill up
TEST_DAYS = 7


class FreshnessBench(BaseSettings):
    """Quality on a test week of models whose training windows end 1..14 days before it; one table."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_FRESHNESS_",
        cli_kebab_case=True,
        cli_prog_name="python -m benchmarks.freshness",
    )

    gaps: list[int] = Field([1, 3, 7, 14], description="Days between a training window's end and the test.")
    window_days: int = Field(14, ge=2, description="Length of every training window.")
    scenarios: list[str] = Field(["none", "concept_drift"], description="Worlds (generator scenarios).")
    onset_before_test: int = Field(7, ge=1, description="Drift onset, in days before the test week.")
    users: int = Field(1500, ge=100, description="Card holders of each generated world.")
    seeds: int = Field(2, ge=1, description="Worlds per scenario (generator seeds 1..N), averaged.")

    def cli_cmd(self) -> None:
        """Run and print the table."""
        print(render(run(self)))


def labelled_world(bench: FreshnessBench, scenario: str, seed: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Point-in-time training rows of a generated world (all labels known) and the test week's start."""
    days = WARM_UP + max(bench.gaps) + bench.window_days + TEST_DAYS
    test_start = world_start() + timedelta(days=days - TEST_DAYS)
    onset = test_start - timedelta(days=bench.onset_before_test)
    return labelled_rows(days, bench.users, seed, scenario, onset), pd.Timestamp(test_start)


def quality_by_gap(bench: FreshnessBench, scenario: str, seed: int) -> dict[int, tuple[float, float]]:
    """PR-AUC and recall at budget on the test week of the model trained ``gap`` days before it."""
    from sklearn.metrics import average_precision_score

    from relearn.model.net import score
    from relearn.model.train import TrainParams, time_split, train
    from relearn.monitoring.quality import at_budget
    from relearn.settings import ALERT_BUDGET

    rows, test_start = labelled_world(bench, scenario, seed)
    times = rows["event_timestamp"]
    test = rows[times >= test_start]
    labels = test["label"].to_numpy(np.float64)
    params = TrainParams(epochs=30, patience=4, lr=0.002, seed=seed, progress=False)
    out = {}
    for gap in bench.gaps:
        end = test_start - pd.Timedelta(days=gap)
        window = rows[(times >= end - pd.Timedelta(days=bench.window_days)) & (times < end)]
        train_df, val_df, _ = time_split(window, 0.15, 0.0)
        result = train(train_df, val_df, params)
        scores = score(result.net, result.preprocessor, test)
        out[gap] = (
            float(average_precision_score(labels, scores)),
            at_budget(scores, labels, ALERT_BUDGET)[1],
        )
    return out


def run(bench: FreshnessBench) -> list[Row]:
    """The rows of the table: one per scenario and gap, the ratio column against the freshest window."""
    rows: list[Row] = []
    for scenario in bench.scenarios:
        runs = [quality_by_gap(bench, scenario, seed) for seed in range(1, bench.seeds + 1)]
        mean = {gap: np.mean([r[gap] for r in runs], axis=0) for gap in bench.gaps}
        freshest = mean[min(bench.gaps)]
        for gap in bench.gaps:
            pr_auc, recall = mean[gap]
            rows.append(
                Row(
                    f"{scenario}: window ending {gap} d before the test week",
                    f"{bench.window_days} d window, {bench.seeds} worlds",
                    throughput=f"PR-AUC {pr_auc:.3f}, recall@budget {recall:.3f}",
                    ratio=f"PR-AUC {pr_auc - freshest[0]:+.3f} vs {min(bench.gaps)} d",
                    value=float(pr_auc),
                )
            )
    return rows


if __name__ == "__main__":
    CliApp.run(FreshnessBench)
