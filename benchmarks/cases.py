"""The benchmarks. Each function runs one, prints what it runs and returns its table rows."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from benchmarks.table import Row, human

T = TypeVar("T")
START = datetime(2026, 1, 1, tzinfo=UTC)
TX_PER_USER_DAY = 2.5  # the generator's mean_daily_transactions
MILLION = 1_000_000
GENERATOR_AIM = MILLION / 60  # 1 M transactions in under 60 s
PIPELINE_AIM = MILLION / 600  # the whole pipeline on 1 M transactions in under 10 minutes
MEMORY_AIM = 4e9  # peak memory under 4 GB
GB = 1e9


def say(what: str) -> None:
    print(f"[bench] {what} …", file=sys.stderr, flush=True)


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def world(transactions: int, days: int) -> dict[str, int]:
    """Users and merchants for about ``transactions`` rows over ``days`` (merchants: one per 500 rows)."""
    return {
        "users": max(10, round(transactions / (TX_PER_USER_DAY * days))),
        "merchants": max(200, round(transactions / 500)),
    }


def rate(rows: int, seconds: float, unit: str = "rows/s") -> str:
    return f"{human(rows / seconds)} {unit}"


# ------------------------------------------------------------------------------------------- generator
def generator(transactions: int, days: int = 28) -> tuple[list[Row], Any]:
    """Generator rows/s at 10 % and at full size; returns the full-size data for the next benchmarks."""
    from relearn.data.generator import GeneratorConfig, generate

    def run(target: int) -> tuple[Any, float]:
        size = world(target, days)
        config = GeneratorConfig(
            start=START, days=days, n_users=size["users"], n_merchants=size["merchants"], seed=0
        )
        say(f"generator: {human(target)} transactions")
        return timed(generate, config)

    rows, speeds = [], []
    for target in (transactions // 10, transactions):
        data, seconds = run(target)
        n = len(data.transactions)
        speeds.append(n / seconds)
        rows.append(
            Row(
                f"generator ({100 * target // transactions} %)",
                f"{human(n)} tx",
                seconds,
                rate(n, seconds),
                aim=f">= {human(GENERATOR_AIM)} rows/s",
                ok=speeds[-1] >= GENERATOR_AIM,
                value=speeds[-1],
            )
        )
    rows[0].ratio = "1.00 (base)"
    rows[1].ratio = f"{speeds[1] / speeds[0]:.2f} x rows/s of 10 %"
    return rows, data


# -------------------------------------------------------------------------------------------- features
def features(data: Any, home: Path) -> tuple[list[Row], pd.DataFrame]:
    """Entity feature tables, then the training set the features step builds (Feast + point-in-time join)."""
    from relearn.features import store as feast_store
    from relearn.features.transforms import entity_feature_tables
    from relearn.settings import RelearnSettings

    transactions, labels = data.transactions, data.labels
    n = len(transactions)
    end = START + timedelta(days=data.config.days)
    say(f"entity feature tables: {human(n)} transactions")
    (users, merchants), tables_s = timed(entity_feature_tables, transactions, labels)

    say("training set: feature tables, feast apply + materialize, point-in-time join")
    settings = RelearnSettings(home=home)

    def build() -> pd.DataFrame:
        feast_store.write_feature_tables(transactions, labels, settings)
        store = feast_store.get_store(settings)
        feast_store.apply(store, settings)
        feast_store.materialize(store, end=end)
        return feast_store.training_set(store, transactions, labels, label_cutoff=end)

    with contextlib.redirect_stdout(sys.stderr):  # Feast prints materialization progress
        frame, build_s = timed(build)
    feature_rows = len(users) + len(merchants)
    return [
        Row(
            "entity feature tables",
            f"{human(n)} tx",
            tables_s,
            rate(n, tables_s),
            f"-> {human(feature_rows)} feature rows",
            value=n / tables_s,
        ),
        Row(
            "training set (features step)",
            f"{human(n)} tx",
            build_s,
            rate(n, build_s),
            f"{build_s / tables_s:.2f} x entity tables time",
            value=n / build_s,
        ),
    ], frame


# -------------------------------------------------------------------------------------------- training
def training(frame: pd.DataFrame, epochs: int) -> list[Row]:
    """Training samples/s with 1 and 2 torch threads (same data, same seed, no early stop), best of two."""
    from relearn.model.train import TrainParams, time_split, train

    train_df, val_df, _ = time_split(frame, 0.15, 0.2)
    best: dict[int, tuple[float, float]] = {}  # threads → (samples/s, seconds) of the faster run
    for threads in (1, 2, 2, 1):  # ABBA order, best of two: drift in machine load hits both alike
        say(f"training: {human(len(train_df))} rows x {epochs} epochs, {threads} torch thread(s)")
        params = TrainParams(epochs=epochs, patience=epochs, num_threads=threads, progress=False)
        result, seconds = timed(train, train_df, val_df, params)
        best[threads] = max(best.get(threads, (0.0, 0.0)), (result.samples_per_second, seconds))
    rows = [
        Row(
            f"training, {threads} thread{'s' if threads > 1 else ''}",
            f"{human(len(train_df))} x {epochs} ep",
            seconds,
            f"{human(speed)} samples/s",
            value=speed,
        )
        for threads, (speed, seconds) in sorted(best.items())
    ]
    rows[0].ratio = "1.00 (base)"
    rows[1].ratio = f"{rows[1].value / rows[0].value:.2f} x samples/s of 1 thread"
    return rows


# -------------------------------------------------------------------------------------------- pipeline
_STAMP = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"
_STARTED = re.compile(_STAMP + r" - INFO - Executing task \S*'([\w-]+)'")
_FINISHED = re.compile(_STAMP + r" - INFO - Task \S*'([\w-]+)'\S* finished with status")


def step_seconds(log: str) -> dict[str, float]:
    """Per-task durations from kfp.local's log (wall-clock stamps, so a run may cross midnight)."""

    def seconds(match: re.Match[str]) -> float:
        h, m, s, ms = map(int, match.groups()[:4])
        return 3600 * h + 60 * m + s + ms / 1000

    started = {m.group(5): seconds(m) for m in map(_STARTED.search, log.splitlines()) if m}
    finished = {m.group(5): seconds(m) for m in map(_FINISHED.search, log.splitlines()) if m}
    return {task: (finished[task] - begin) % 86_400 for task, begin in started.items() if task in finished}


def pipeline(transactions: int, root: Path, days: int = 35) -> list[Row]:
    """The whole training pipeline under kfp.local: wall time, each step's share, peak memory.

    Run it before anything else in this process: ``ru_maxrss`` of the process itself is a peak over its
    whole life, so it only says what the runner needed if the in-process benchmarks have not run yet.
    """
    from pipelines.run import run_locally

    home = root / "home"
    os.environ["RELEARN_HOME"] = str(home)  # read by the task subprocesses (run_locally sets it too)
    params = {"start": START.date().isoformat(), "days": days, **world(transactions, days)}
    params |= {"seed": 7, "git_sha": "benchmark"}
    say(f"pipeline: {human(transactions)} transactions ({params['users']} users x {days} days)")
    summary, wall = timed(run_locally, params, root / "runs", home)
    steps = step_seconds(Path(summary["log"]).read_text())
    n = pd.read_parquet(Path(summary["run_dir"]) / "ingest" / "transactions", columns=["amount"]).shape[0]

    size = f"{human(n)} tx"
    rows = [
        Row(
            f"pipeline ({len(steps)} steps)",
            size,
            wall,
            rate(n, wall, "tx/s"),
            "100 % (total)",
            f">= {human(PIPELINE_AIM)} tx/s",
            n / wall >= PIPELINE_AIM,
            n / wall,
        )
    ]
    for task, seconds in [*steps.items(), ("kfp.local overhead", wall - sum(steps.values()))]:
        rows.append(Row(f"  {task}", size, seconds, ratio=f"{100 * seconds / wall:.1f} % of total"))

    # Linux reports kilobytes. Tasks run one after another beside the runner: the peak is at most their sum.
    step_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    runner_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = step_peak + runner_peak
    rows.append(
        Row(
            "pipeline peak memory (RSS)",
            size,
            throughput=f"{peak / GB:.2f} GB",
            ratio=f"largest step {step_peak / GB:.2f} + runner {runner_peak / GB:.2f} GB",
            aim=f"< {MEMORY_AIM / GB:.0f} GB",
            ok=peak < MEMORY_AIM,
            value=peak,
        )
    )
    return rows
