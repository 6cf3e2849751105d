"""``python -m benchmarks.distributed`` (``make bench-distributed``): training samples/s, 1 vs 2 processes.

One training set (the generator, then the features step's Feast join) is trained by the train step with
``workers=1`` (in the step's process) and ``workers=2`` (torchrun: two gloo processes, DDP, a shard each),
side by side in one run, in ABBA order, best of each. Samples/s is the training loop's (rank 0's clock, both
processes' samples); the wall time is the whole step: reading the data, starting the processes, MLflow.
Both runs must produce the same model (up to float32 summation order): the last rows say by how much they
differ. Every option is also a RELEARN_BENCH_DISTRIBUTED_<OPTION> variable.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks import cases
from benchmarks.table import Row, human, render, write_json

QUICK_TRANSACTIONS = 100_000
# The metric tolerance of tests/model/test_distributed.py. Weights drift apart with the number of steps
# (float32 summation order; ~1e-7 after 100 steps, ~1e-4 after 600): reported, not judged.
SAME_METRIC_AIM = 1e-4

# The field "json" shadows BaseModel.json (deprecated); pydantic warns about that when the class is made.
warnings.filterwarnings("ignore", message='Field name "json" in "DistributedBench" shadows')


class DistributedBench(BaseSettings):
    """Training samples/s with 1 and 2 processes (gloo DDP) on the same data; the ratio and the model gap."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_DISTRIBUTED_",
        cli_prog_name="python -m benchmarks.distributed",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    transactions: int = Field(1_000_000, ge=10_000, description="Size of the data window in transactions.")
    quick: bool = Field(
        False, description=f"~{QUICK_TRANSACTIONS:,} transactions (overrides --transactions)."
    )
    epochs: int = Field(2, ge=1, description="Epochs per run (no early stop).")
    batch_sizes: list[int] = Field(
        [2048, 16384],
        description="Global batches: the pipeline's default, and a larger one (fewer gradient all-reduces).",
    )
    json: Path | None = Field(None, description="Also write the table as JSON to this file.")

    def cli_cmd(self) -> None:
        """Runs the benchmark and prints the table."""
        run(self)


def run(bench: DistributedBench) -> list[Row]:
    """Builds the training set, trains with 1 and 2 processes (ABBA), prints the table, returns its rows."""
    from relearn.data.generator import GeneratorConfig, generate
    from relearn.model.train import split_points
    from relearn.settings import RelearnSettings

    n = QUICK_TRANSACTIONS if bench.quick else bench.transactions
    with tempfile.TemporaryDirectory(prefix="relearn-bench-distributed-") as tmp:
        root = Path(tmp)
        # The torchrun processes read MLflow's location from the environment, like pipeline tasks.
        with mock.patch.dict(os.environ, {"RELEARN_HOME": str(root / "home")}):
            days = 28
            cases.say(f"data: {human(n)} transactions, then the features step's training set")
            config = GeneratorConfig(start=cases.START, days=days, seed=0, **_world(n, days))
            _, frame = cases.features(generate(config), root / "home")
            path = root / "training_set.parquet"
            frame.to_parquet(path, index=False)
            train_rows = split_points(len(frame), 0.15, 0.2)[0]  # the train step's default split
            del frame
            settings = RelearnSettings(home=root / "home")
            table = []
            for batch_size in bench.batch_sizes:
                runs = _train_runs(path, root, bench.epochs, batch_size, settings)
                table += _rows(runs, f"{human(train_rows)} x {bench.epochs} ep, batch {human(batch_size)}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nrelearn distributed training: {human(n)} transactions, {os.cpu_count()} cores, load {load}\n")
    print(render(table))
    if bench.json:
        meta = {"transactions": n, "cores": os.cpu_count(), "load_1_5_15min": os.getloadavg()}
        write_json(table, bench.json, meta | {"python": platform.python_version()})
        print(f"\nJSON: {bench.json}")
    return table


def _world(transactions: int, days: int) -> dict[str, int]:
    size = cases.world(transactions, days)
    return {"n_users": size["users"], "n_merchants": size["merchants"]}


def _train_runs(
    path: Path, root: Path, epochs: int, batch_size: int, settings: Any
) -> dict[int, dict[str, Any]]:
    """The train step with 1 and 2 workers, ABBA: best samples/s, shortest wall time, and a model of each."""
    from relearn import steps
    from relearn.model.net import load_model

    params = steps.TrainStepParams(
        epochs=epochs, patience=epochs, batch_size=batch_size, distributed_backend="local"
    )
    best: dict[int, dict[str, Any]] = {}
    for i, workers in enumerate((1, 2, 2, 1)):  # ABBA: drift in the machine's load hits both alike
        cases.say(f"train step: {epochs} epochs, batch {batch_size}, {workers} process(es)")
        model_dir = root / f"model-{batch_size}-{i}"
        out, wall = cases.timed(
            steps.train, str(path), str(model_dir), params.model_copy(update={"workers": workers}), settings
        )
        run = best.setdefault(workers, {"speed": 0.0, "wall": float("inf"), "model": load_model(model_dir)})
        run["speed"] = max(run["speed"], out["metrics"]["samples_per_second"])
        run["wall"] = min(run["wall"], wall)
        run["val_pr_auc"] = out["metrics"]["best_val_pr_auc"]
    return best


def _rows(runs: dict[int, dict[str, Any]], size: str) -> list[Row]:
    """Samples/s of the training loop and wall time of the step, side by side; then the model gap."""
    one, two = runs[1], runs[2]
    metric_gap = abs(one["val_pr_auc"] - two["val_pr_auc"])
    return [
        Row(
            "training loop, 1 process (in the step)",
            size,
            None,
            f"{human(one['speed'])} samples/s",
            "1.00 (base)",
            value=one["speed"],
        ),
        Row(
            "training loop, 2 processes (torchrun, gloo DDP)",
            size,
            None,
            f"{human(two['speed'])} samples/s",
            f"{two['speed'] / one['speed']:.2f} x 1 process",
            value=two["speed"],
        ),
        Row("  train step wall, 1 process", size, one["wall"], value=one["wall"]),
        Row(
            "  train step wall, 2 processes",
            size,
            two["wall"],
            ratio=f"{two['wall'] - one['wall']:+.1f} s (process start-up, shard reads)",
            value=two["wall"],
        ),
        Row(
            "  same model: |val PR-AUC diff|, 2 vs 1",
            size,
            ratio=f"{metric_gap:.1e} (max |weight diff| {_weight_gap(one['model'], two['model']):.1e})",
            aim=f"<= {SAME_METRIC_AIM:.0e}",
            ok=metric_gap <= SAME_METRIC_AIM,
            value=metric_gap,
        ),
    ]


def _weight_gap(a: Any, b: Any) -> float:
    """The largest absolute difference between two loaded models' weights."""
    state_a, state_b = a[0].state_dict(), b[0].state_dict()
    return max(float((state_a[k] - state_b[k]).abs().max()) for k in state_a)


def main(argv: list[str] | None = None) -> None:
    """Entry point; parses ``argv`` (default: the command line)."""
    CliApp.run(DistributedBench, cli_args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
