"""``python -m benchmarks.rollout``: time from a bad canary's start to its automated rollback.

Local mode with real processes on 127.0.0.1, the same stack as ``tests/rollout/test_rollout_e2e.py`` (reused
from there: stable predictor v1 and the bad v3 — an artifact whose embedding tables are smaller than its
vocabularies, so every request fails with a 500 — behind the local router, Prometheus scraping every
second, a tmp MLflow registry, a paced v2 REST load generator counting outcomes by route). Each run starts
v3 as canary at ``--percent`` and calls the controller's ``step`` every ``--interval`` seconds until it rolls
back; the rollback time is measured from the start of the canary to the end of the rollback step, and the
requests the bad version served are the failed canary-route requests the load generator saw. Between runs
the benchmark waits one rate window, so a run never sees the previous run's errors.

The detection floor is set by the scrape interval (1 s), the rate window (a rate needs two samples of
v3's error counter) and the controller interval.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.table import Row, render

TESTS = Path(__file__).resolve().parent.parent / "tests"


class RolloutBench(BaseSettings):
    """Bad canary → automated rollback: seconds and requests served by the bad version, per run."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_ROLLOUT_", cli_prog_name="python -m benchmarks.rollout", cli_kebab_case=True
    )

    runs: int = Field(3, ge=1, description="Bad-canary rollouts to measure.")
    percent: int = Field(10, ge=1, le=99, description="Starting canary percent of the bad version.")
    rate: float = Field(20.0, gt=0, description="Requests/s of each of the two load-generator threads.")
    interval: float = Field(1.5, gt=0, description="Controller interval (seconds).")
    window: int = Field(5, ge=2, description="Controller rate window (seconds).")
    timeout: float = Field(60.0, gt=0, description="Longest wait for one rollback (seconds).")

    def cli_cmd(self) -> None:
        print(render(run(self)))


def run(bench: RolloutBench) -> list[Row]:
    """Start the stack, measure ``bench.runs`` rollbacks, stop everything; one row per run + the median."""
    sys.path.insert(0, str(TESTS))
    from relearn.rollout.analysis import Action
    from relearn.rollout.controller import ControllerSettings, MlflowRegistry, step
    from relearn.settings import RelearnSettings
    from support.rollout_stack import Load, Stack, make_artifacts

    tmp = Path(tempfile.mkdtemp(prefix="relearn-bench-rollout-"))
    os.environ["RELEARN_HOME"] = str(tmp / "home")
    settings = RelearnSettings(home=tmp / "home")
    artifacts = make_artifacts(tmp / "artifacts")
    artifacts = {"1": artifacts["1"], "3": artifacts["3"]}
    _register(settings, artifacts)
    registry = MlflowRegistry(settings)
    stack = Stack(tmp, artifacts)
    cfg = ControllerSettings(
        backend="local",
        state=stack.state,
        audit_log=tmp / "audit.jsonl",
        window=f"{bench.window}s",
        interval_seconds=bench.interval,
        min_requests=10,
        max_p99_seconds=2.0,
    )
    rows: list[Row] = []
    results: list[tuple[float, int]] = []
    load = None
    try:
        stack.wait_ready()
        load = Load(stack.url, rate=bench.rate).start()
        time.sleep(bench.window + 2)
        for i in range(bench.runs):
            failed_before = load.snapshot()[1]["canary"]
            started = time.monotonic()
            stack.backend.start_canary("3", bench.percent)
            seconds = None
            while time.monotonic() - started < bench.timeout:
                time.sleep(cfg.interval_seconds)
                if step(stack.backend, stack.prom, registry, cfg).action is Action.ROLLBACK:
                    seconds = time.monotonic() - started
                    break
            if seconds is None:
                stack.backend.rollback()
            time.sleep(0.5)  # requests in flight at the rollback finish
            served = load.snapshot()[1]["canary"] - failed_before
            if seconds is not None:
                results.append((seconds, served))
            rows.append(
                Row(
                    f"bad canary {bench.percent}% → rollback, run {i + 1}",
                    f"{2 * bench.rate:g} req/s",
                    seconds,
                    f"{served} bad requests",
                    aim="rolled back",
                    ok=seconds is not None,
                    value=served,
                )
            )
            time.sleep(bench.window + 2)  # the next run must not see this run's errors
        ok, failed, _ = load.snapshot()
    finally:
        if load is not None:
            load.close()
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if results:
        rows.append(
            Row(
                f"median of {len(results)} runs",
                f"window {bench.window}s, every {bench.interval:g}s",
                statistics.median(s for s, _ in results),
                f"{statistics.median(n for _, n in results):g} bad requests",
            )
        )
    rows.append(
        Row(
            "stable route failures (whole benchmark)",
            f"{sum(ok.values()) + sum(failed.values())} requests",
            throughput=str(failed["stable"] + failed["unattributed"]),
            aim="0",
            ok=failed["stable"] + failed["unattributed"] == 0,
        )
    )
    return rows


def _register(settings, artifacts: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(settings.model_name)
    for version in ("1", "2", "3"):  # version numbers as in the test; v2 is not served here
        client.create_model_version(settings.model_name, source=str(artifacts.get(version, artifacts["1"])))
    client.set_registered_model_alias(settings.model_name, "champion", "1")


def main() -> None:
    """Parse the options (``--help``) and run."""
    CliApp.run(RolloutBench)


if __name__ == "__main__":
    main()
