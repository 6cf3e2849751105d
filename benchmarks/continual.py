"""``python -m benchmarks.continual``: warm start vs from scratch, and a tuning budget vs the defaults.

The world of issue 21's benchmark: concept_drift (a new fraud pattern from day 21 of 35). For each seed, a
champion is trained from scratch on the days before the onset; then the whole window is retrained two ways,
side by side in one run: from scratch, and warm-started from the champion by the default retraining policy
(relearn.model.warm: the rows after the champion's, plus 10 % replayed older rows). Reported: wall time of
the training loop, samples processed (epochs x rows), epochs, and PR-AUC on the window's last 20 % (the
test split, never trained or early-stopped on). Aims (the issue's): samples <= 1/3 of scratch, PR-AUC within
0.01. Then an Optuna study of ``trials`` trials on seed 0's training split: best vs default validation
PR-AUC, and the test PR-AUC of both retrained. Every option is also a RELEARN_BENCH_CONTINUAL_<OPTION>.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict
from sklearn.metrics import average_precision_score

from benchmarks.table import Row, render
from benchmarks.worlds import labelled_rows, world_start

ONSET_DAY = 21


class ContinualBench(BaseSettings):
    """Warm start vs from scratch on concept drift (per seed), and Optuna vs the default hyper-parameters."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_CONTINUAL_",
        cli_kebab_case=True,
        cli_prog_name="python -m benchmarks.continual",
    )

    seeds: int = Field(3, ge=1, description="Worlds (generator seeds 1..N) and training seeds (0..N-1).")
    users: int = Field(1500, ge=100, description="Card holders of the generated world (35 days).")
    trials: int = Field(12, ge=0, description="Optuna trials on seed 0's window (0: no study).")
    jobs: int = Field(2, ge=1, description="Trials at once.")

    def cli_cmd(self) -> None:
        """Run and print the table."""
        print(render(run(self)))


def _window(users: int, seed: int) -> pd.DataFrame:
    return labelled_rows(35, users, seed, "concept_drift", world_start() + timedelta(days=ONSET_DAY))


def run(bench: ContinualBench) -> list[Row]:
    """The rows of the table."""
    from relearn.model import warm
    from relearn.model.net import score
    from relearn.model.train import TrainParams, time_split, train

    rows: list[Row] = []
    first: dict[str, pd.DataFrame] = {}
    for i in range(bench.seeds):
        window = _window(bench.users, seed=1 + i)
        params = TrainParams(epochs=30, patience=4, lr=0.002, seed=i, progress=False)
        onset = window["event_timestamp"].min().normalize() + pd.Timedelta(days=ONSET_DAY)
        ctrain, cval, _ = time_split(window[window["event_timestamp"] < onset], 0.15, 0.0)
        old = train(ctrain, cval, params)
        champion = warm.Champion(
            "1", old.net, old.preprocessor, {"train_end": ctrain["event_timestamp"].max().isoformat()}
        )
        train_df, val_df, test_df = time_split(window, 0.15, 0.2)
        first = first or {"train": train_df, "val": val_df, "test": test_df}

        def pr_auc(result, test_df=test_df) -> float:
            return average_precision_score(test_df["label"], score(result.net, result.preprocessor, test_df))

        started = time.perf_counter()
        scratch = train(train_df, val_df, params)
        scratch_s = time.perf_counter() - started
        plan = warm.plan(warm.RetrainPolicy(), champion, train_df, params)
        started = time.perf_counter()
        warmed = train(plan.train_df, val_df, plan.params, init=plan.init)
        warm_s = time.perf_counter() - started
        samples = (len(scratch.history) * len(train_df), len(warmed.history) * len(plan.train_df))
        quality = (pr_auc(scratch), pr_auc(warmed))
        size = f"world {1 + i}, {len(window):,} rows"
        rows += [
            Row(f"champion (pre-onset) seed {i}", size, throughput=f"PR-AUC {pr_auc(old):.3f}"),
            Row(
                f"scratch seed {i}",
                f"{len(scratch.history)} epochs x {len(train_df):,}",
                scratch_s,
                f"PR-AUC {quality[0]:.3f}",
            ),
            Row(
                f"warm seed {i}",
                f"{len(warmed.history)} epochs x {len(plan.train_df):,}",
                warm_s,
                f"PR-AUC {quality[1]:.3f}",
                f"samples {samples[1] / samples[0]:.2f}, time {warm_s / scratch_s:.2f}",
                "samples <= 0.33, PR-AUC >= scratch - 0.01",
                samples[1] <= samples[0] / 3 and quality[1] >= quality[0] - 0.01,
            ),
        ]
    if bench.trials:
        rows += _tuning(
            bench,
            first,
            pr_auc_of=lambda r: average_precision_score(
                first["test"]["label"], score(r.net, r.preprocessor, first["test"])
            ),
        )
    return rows


def _tuning(bench: ContinualBench, split: dict[str, pd.DataFrame], pr_auc_of) -> list[Row]:
    from relearn.model import tuning
    from relearn.model.train import TrainParams, train
    from relearn.settings import RelearnSettings

    base = TrainParams(epochs=30, patience=4, lr=0.002, seed=0, progress=False)
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        study = tuning.tune(
            split["train"],
            split["val"],
            trials=bench.trials,
            jobs=bench.jobs,
            base=base,
            seed=0,
            settings=RelearnSettings(home=Path(home)),
            report_dir=Path(home) / "report",
        )
        seconds = time.perf_counter() - started
    best = train(split["train"], split["val"], base.model_copy(update=study.best_params))
    default = train(split["train"], split["val"], base)
    return [
        Row(
            f"optuna {bench.trials} trials, {bench.jobs} at once",
            f"{study.states}",
            seconds,
            f"val {study.best_value:.3f} vs default {study.default_value:.3f}",
            f"test {pr_auc_of(best):.3f} vs default {pr_auc_of(default):.3f}",
            "best val > default val",
            study.best_value > study.default_value,
        )
    ]


def main() -> None:
    """``python -m benchmarks.continual``."""
    CliApp.run(ContinualBench)


if __name__ == "__main__":
    main()
