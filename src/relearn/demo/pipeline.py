"""The demo's training runs and state: the pipeline's command line and summary, the first champion.

The first champion is trained once per world and code and then restored from its cache; with
``--state redis`` the streaming state's Redis starts here and is bootstrapped from the lake.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from relearn.commands import cli_options
from relearn.demo.settings import DemoSettings
from relearn.demo.stack import (
    Processes,
    StackError,
    start_state_redis,
)
from relearn.demo.world import START, World, cache_key

log = logging.getLogger(__name__)


def pipeline_argv(
    settings: DemoSettings,
    source: Path,
    start: pd.Timestamp,
    days: int,
    home: Path,
    train_mode: str = "scratch",
) -> list[str]:
    """``python -m pipelines.run`` on the data lake window ``[start, start + days)``; summary to JSON.

    ``train_mode`` is the incident's (:mod:`relearn.monitoring.response`): ``auto`` fine-tunes the champion.
    """
    options = cli_options(
        source=source,
        start=start.isoformat(),
        days=days,
        seed=settings.seed,
        label_maturity_days=round(settings.label_maturity_days),
        alert_budget=settings.alert_budget,
        max_slice_regression=settings.max_slice_regression,
        train_mode=train_mode,
        # A short recent window: keep 75 % of it (the oldest part, by time) for training, so the rows of
        # a new pattern reach the training split and not only validation and test.
        val_fraction=0.1,
        test_fraction=0.15,
        pipeline_root=home / "pipeline_runs",
        summary_json=home / "pipeline_runs" / f"summary-{start:%Y%m%dT%H%M}.json",
        log_level="WARNING",
    )
    return [sys.executable, "-m", "pipelines.run", *options]


def pipeline_summary(argv: list[str], returncode: int, log_path: Path) -> dict[str, Any]:
    """The run's summary, or an ``error`` naming the log."""
    summary = Path(argv[argv.index("--summary-json") + 1])
    if returncode != 0 or not summary.exists():
        return {"error": f"training pipeline failed (exit {returncode}); see {log_path}"}
    return json.loads(summary.read_text())


def child_env(home: Path) -> dict[str, str]:
    """The environment of the demo's child processes: this one's, with its RELEARN_HOME."""
    return {**os.environ, "RELEARN_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def redis_state(settings: DemoSettings, procs: Processes, home: Path, lake: Path) -> None:
    """The streaming state on a real Redis: started, then bootstrapped from the lake up to the live start.

    The first champion's run (or its cached copy) filled the embedded state; Redis starts empty, so the
    backfill command adds the history's events (idempotent by transaction id), as an operator would.
    """
    start_state_redis(procs, home, settings.redis_server, settings.state_appendfsync)
    until = START + timedelta(days=settings.history_days)
    argv = [sys.executable, "-m", "relearn.features.backfill", "--transactions", str(lake)]
    argv += ["--labels", str(lake), "--until", until.isoformat()]
    with (home / "logs" / "state-bootstrap.log").open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=out, env=procs.env, check=False)
    if done.returncode != 0:
        raise StackError(f"state bootstrap failed (exit {done.returncode}); see {out.name}")


def first_champion(settings: DemoSettings, world: World, home: Path, show: bool) -> dict[str, Any]:
    """Train the first champion on the history, or restore it (MLflow, Feast repo) from the cache."""
    argv = pipeline_argv(settings, world.source, pd.Timestamp(START), settings.history_days, home)
    package = Path(__file__).resolve().parents[1]
    code = [
        *package.glob("model/*.py"),
        *package.glob("features/*.py"),
        package / "steps.py",
        package / "training.py",
    ]
    cache = settings.home.resolve() / "champions" / cache_key({"world": world.key, "argv": argv}, *code)
    if home.exists():
        shutil.rmtree(home)
    if (cache / "summary.json").exists():
        shutil.copytree(cache, home)  # same absolute paths as when it was trained: URIs stay valid
        return json.loads((cache / "summary.json").read_text())
    (home / "logs").mkdir(parents=True)
    log_path = home / "logs" / "train-champion.log"
    with log_path.open("w") as out:  # in the foreground: its progress bar shows, Ctrl-C reaches it
        stderr = None if show else out
        done = subprocess.run(argv, stdout=out, stderr=stderr, env=child_env(home), check=False)
    summary = pipeline_summary(argv, done.returncode, log_path)
    if "error" in summary:
        raise StackError(summary["error"])
    (home / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(home, cache)
    return summary
