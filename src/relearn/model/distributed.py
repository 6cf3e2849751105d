r"""Data-parallel training with ``torch.distributed`` (gloo): the entry point of every training process.

Each process runs :func:`run_worker`: it joins the process group from its environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, set by ``torchrun`` on this machine or by the Kubeflow
Training Operator in the pods of a PyTorchJob), reads its shard of the training set, trains with DDP
(:func:`relearn.model.train.train_shard`), and rank 0 alone writes the model and logs to MLflow, into the
run the train step opened. The train step picks the launcher (:func:`resolve_backend`):

- ``local``: :func:`torchrun` starts them on this machine (``kfp.local``, ``make train``);
- ``pytorchjob``: :mod:`relearn.model.pytorchjob` submits a PyTorchJob and waits for it (a cluster).

Usage (one process per rank; torchrun sets the rank environment)::

    torchrun --standalone --nproc-per-node 2 -m relearn.model.distributed --training-set \
        training_set.parquet --run-id <mlflow run> --model-dir model/
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.errors import RelearnError
from relearn.model.train import Shard, TrainParams, TrainResult, shard_bounds, split_points, train_shard
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)

BACKENDS = ("auto", "local", "pytorchjob")
MODEL_ARTIFACT = "trained_model"  # where rank 0 logs the artifact when the step cannot read its files


class TrainingFailed(RelearnError, RuntimeError):
    """The training processes (torchrun or the PyTorchJob) did not finish successfully."""


class WorkerOptions(BaseSettings):
    """One process of a data-parallel training run: its shard of the data, DDP, rank 0 publishes.

    torchrun or the Training Operator set the rank environment; every option is also a
    ``RELEARN_TRAINING_WORKER_<OPTION>`` variable.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_TRAINING_WORKER_",
        cli_prog_name="python -m relearn.model.distributed",
        cli_kebab_case=True,
        extra="ignore",
    )

    training_set: str = Field(
        description="Parquet training set sorted by event_timestamp (the features step's output): a path, "
        "or an MLflow artifact URI such as runs:/<run_id>/inputs/training_set."
    )
    run_id: str = Field(description="MLflow run that rank 0 logs into (the train step opened it).")
    model_dir: Path = Field(description="Where rank 0 writes the model artifact.")
    params: TrainParams = Field(default_factory=TrainParams, description="Hyper-parameters (JSON).")
    val_fraction: float = Field(0.15, description="Share of the rows (by time) for early stopping.")
    test_fraction: float = Field(0.2, description="Share of the rows (latest by time) held out.")
    log_model: bool = Field(
        False, description=f"Rank 0 also logs the artifact to the run under {MODEL_ARTIFACT}/ (for pods)."
    )
    backend: str = Field("gloo", description="torch.distributed backend (gloo: CPUs; nccl: GPUs).")

    def cli_args(self) -> list[str]:
        """These options as command-line arguments, for torchrun or a PyTorchJob's container."""
        args = []
        for name, value in self.model_dump(mode="json").items():
            args += [f"--{name.replace('_', '-')}", value if isinstance(value, str) else json.dumps(value)]
        return args

    def cli_cmd(self) -> None:
        """Runs this process's part of the training."""
        from relearn.logs import configure_logging

        configure_logging()
        run_worker(self)


def resolve_backend(name: str) -> str:
    """The launcher for ``workers`` > 1: ``local`` (torchrun here) or ``pytorchjob`` (the cluster).

    ``auto`` picks ``pytorchjob`` inside a Kubeflow Pipelines pod (KFP sets ``KFP_POD_NAME`` there) and
    ``local`` everywhere else, ``kfp.local`` included.

    Raises:
        ValueError: An unknown backend name.
    """
    if name not in BACKENDS:
        raise ValueError(f"distributed_backend must be one of {BACKENDS}, not {name!r}")
    if name == "auto":
        return "pytorchjob" if os.environ.get("KFP_POD_NAME") else "local"
    return name


# ------------------------------------------------------------------------------------------------ data
def read_shard(path: str | Path, rank: int, world: int, val_fraction: float, test_fraction: float) -> Shard:
    """This process's rows of the training and validation splits of a training set.

    The features step writes the training set sorted by event time, so the time split is positional: the
    split points come from the row count in the Parquet footer, each split is cut into ``world`` contiguous
    parts, and a process reads only the row groups that overlap its parts.

    Raises:
        ValueError: The file is not sorted by ``event_timestamp`` (the split would not be a time split).
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    timestamps = parquet.read(columns=["event_timestamp"]).column(0).to_pandas()
    if not timestamps.is_monotonic_increasing:
        raise ValueError(f"{path} is not sorted by event_timestamp")
    val_start, test_start = split_points(parquet.metadata.num_rows, val_fraction, test_fraction)
    train_bounds = shard_bounds(val_start, world)
    val_bounds = [val_start + b for b in shard_bounds(test_start - val_start, world)]
    return Shard(
        train=_read_rows(parquet, train_bounds[rank], train_bounds[rank + 1]),
        val=_read_rows(parquet, val_bounds[rank], val_bounds[rank + 1]),
        train_offset=train_bounds[rank],
        n_train=val_start,
        val_sizes=tuple(stop - start for start, stop in pairwise(val_bounds)),
    )


def _read_rows(parquet: Any, start: int, stop: int) -> pd.DataFrame:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups that hold them."""
    groups, first, offset = [], 0, 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            first = first if groups else offset
            groups.append(group)
        offset += rows
    table = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
    return table.slice(start - first, stop - start).to_pandas()


def _local_copy(uri: str, directory: Path) -> Path:
    """A local path for ``uri``: the path itself, or a download of an MLflow artifact URI (``runs:/...``)."""
    if not urlparse(uri).scheme:
        return Path(uri)
    import mlflow

    tracking_uri = RelearnSettings().tracking_uri()
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(directory), tracking_uri=tracking_uri))


# --------------------------------------------------------------------------------------------- process
def run_worker(options: WorkerOptions) -> TrainResult:
    """Joins the process group, trains on this rank's shard; rank 0 saves the model and logs the run."""
    import torch.distributed as dist

    dist.init_process_group(options.backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        with tempfile.TemporaryDirectory(prefix="relearn-shard-") as tmp:
            path = _local_copy(options.training_set, Path(tmp))
            shard = read_shard(path, rank, world, options.val_fraction, options.test_fraction)
        log.info(
            "shard read",
            extra={"rank": rank, "world": world, "train_rows": len(shard.train), "val_rows": len(shard.val)},
        )
        result = train_shard(shard, options.params)
        if rank == 0:
            _publish(result, options, world)
        return result
    finally:
        dist.destroy_process_group()


def _publish(result: TrainResult, options: WorkerOptions, world: int) -> None:
    """Rank 0: the model artifact, and the training params and metrics in the step's MLflow run."""
    import mlflow

    from relearn.model.net import save_model
    from relearn.model.train import log_training

    save_model(options.model_dir, result.net, result.preprocessor, {"mlflow_run_id": options.run_id})
    mlflow.set_tracking_uri(RelearnSettings().tracking_uri())
    with mlflow.start_run(run_id=options.run_id):
        log_training(result, options.params)
        mlflow.log_param("processes", world)
        if options.log_model:
            mlflow.log_artifacts(str(options.model_dir), MODEL_ARTIFACT)
    log.info("published", extra={"run_id": options.run_id, "model_dir": str(options.model_dir)})


def torchrun(workers: int, options: WorkerOptions) -> None:
    """Runs ``workers`` training processes on this machine with torchrun (gloo over loopback) and waits.

    Their output goes to this process's stdout and stderr (the step's log).

    Raises:
        TrainingFailed: A process failed (torchrun stops the others and exits non-zero).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on a free loopback port: runs on one machine never collide
        f"--nproc-per-node={workers}",
        "-m",
        __name__,
        *options.cli_args(),
    ]
    # Each process gets its own torch threads (TrainParams.num_threads): no oversubscription of the cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(options.params.num_threads or 1)}
    log.info("torchrun", extra={"workers": workers, "run_id": options.run_id})
    returncode = subprocess.run(command, env=env, check=False).returncode
    if returncode != 0:
        raise TrainingFailed(f"torchrun with {workers} processes exited with {returncode}: see the log above")


def main() -> None:
    """Console entry point of one training process."""
    CliApp.run(WorkerOptions)


if __name__ == "__main__":
    main()
