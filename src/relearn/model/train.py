"""Training: time-based splits, a seeded mini-batch loop with early stopping, and MLflow logging.

The loop is data-parallel ready: a training process holds a :class:`Shard` of the rows (all of them when it
trains alone) and, under ``torch.distributed``, wraps the network in DDP. Every process walks the same
global batches and keeps the rows it holds, so one process and N processes train the same model (up to
floating-point summation order): see :mod:`relearn.model.distributed`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from sklearn.metrics import average_precision_score

from relearn.features.spec import CATEGORICAL_INPUTS, LABEL, NUMERIC_INPUTS
from relearn.logs import progress_bar
from relearn.model.net import FraudNet, Preprocessor, predict_logits, signed_log1p
from relearn.model.parallel import Ranks, SharedDropout

log = logging.getLogger(__name__)


class TrainParams(BaseModel):
    """Hyper-parameters of one training run (logged to MLflow as run params)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(2048, ge=1, description="Global batch: split over the processes under DDP.")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(4, ge=1, description="Epochs without a val PR-AUC gain before stopping.")
    min_delta: float = Field(1e-4, ge=0, description="Smallest val PR-AUC gain that counts.")
    seed: int = 0
    pos_weight: Literal["auto"] | float = Field(
        "auto", description='Weight of positives in the loss; "auto" = sqrt(negatives / positives).'
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads; default 1 (a small MLP gains little and suffers under contention).",
    )
    progress: bool = True


@dataclass
class TrainResult:
    """A trained network plus what is needed to use and describe it."""

    net: FraudNet
    preprocessor: Preprocessor
    history: list[dict[str, float]]
    best_epoch: int
    best_val_pr_auc: float
    samples_per_second: float
    pos_weight: float
    stopped_early: bool
    params: TrainParams = field(default_factory=TrainParams)


@dataclass(frozen=True)
class Shard:
    """The rows one training process holds: a contiguous slice of the training and of the validation split.

    Attributes:
        train: This process's training rows, positions ``train_offset ..`` of the whole training split.
        val: This process's validation rows.
        train_offset: Position of ``train``'s first row in the whole training split.
        n_train: Rows of the whole training split (the global batches are drawn over all of them).
        val_sizes: Validation rows held by each process, in rank order (to gather the scores).
    """

    train: pd.DataFrame
    val: pd.DataFrame
    train_offset: int
    n_train: int
    val_sizes: tuple[int, ...]

    @classmethod
    def whole(cls, train_df: pd.DataFrame, val_df: pd.DataFrame) -> Shard:
        """The shard of a process that trains alone: both splits entirely."""
        return cls(train_df, val_df, 0, len(train_df), (len(val_df),))


def split_points(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Where validation and test start among ``n`` rows in time order (see :func:`time_split`)."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    return round(n * (1 - val_fraction - test_fraction)), round(n * (1 - test_fraction))


def shard_bounds(n: int, world: int) -> list[int]:
    """Bounds of ``world`` contiguous, near-equal parts of ``n`` rows: part ``r`` is ``[b[r], b[r + 1])``."""
    return [n * rank // world for rank in range(world + 1)]


def time_split(
    frame: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split by event time: oldest rows train, then validation, newest test.

    Random splits would leak the future into training (entity aggregates and fraud campaigns are
    correlated in time); a time split matches how the model is used.
    """
    val_start, test_start = split_points(len(frame), val_fraction, test_fraction)
    ordered = frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    return ordered.iloc[:val_start], ordered.iloc[val_start:test_start], ordered.iloc[test_start:]


def _resolve_pos_weight(params: TrainParams, positives: float, n: float) -> float:
    if params.pos_weight != "auto":
        return float(params.pos_weight)
    if positives == 0:
        return 1.0
    # The square root keeps the gradient signal of rare positives without the noise of full reweighting.
    return math.sqrt((n - positives) / positives)


def _fit_preprocessor(frame: pd.DataFrame, ranks: Ranks) -> Preprocessor:
    """:meth:`Preprocessor.fit`'s statistics over the whole training split, from sums over the processes."""
    values = signed_log1p(frame[list(NUMERIC_INPUTS)].to_numpy(np.float64))
    count = ranks.sum((~np.isnan(values)).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = ranks.sum(np.nansum(values, axis=0)) / count
        std = np.sqrt(ranks.sum(np.nansum((values - mean) ** 2, axis=0)) / count)
    # The same guards as Preprocessor.fit: missing columns impute 0, constant columns stay finite.
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return Preprocessor(NUMERIC_INPUTS, CATEGORICAL_INPUTS, mean, std)


def train(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    params: TrainParams | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    init: tuple[FraudNet, Preprocessor] | None = None,
) -> TrainResult:
    """Train a :class:`FraudNet` with early stopping on validation PR-AUC.

    Tensors are built once and mini-batches are sliced from a seeded permutation, so an epoch over 1M
    rows costs a few seconds on two cores. The positive-class weight shifts the learned logits by about
    ``log(pos_weight)``; that shift is subtracted from the output bias afterwards so scores stay close
    to calibrated probabilities (rankings, and so PR-AUC, are unchanged).

    Args:
        train_df: Training rows with MODEL_INPUTS and LABEL.
        val_df: Validation rows (later in time than ``train_df``) for early stopping.
        params: Hyper-parameters; defaults when omitted.
        on_epoch: Called after every epoch with that epoch's history entry (may raise to stop, e.g. a prune).
        init: Warm start: a trained network and its preprocessor to fine-tune (copied, never changed);
            its standardization is kept (see :mod:`relearn.model.warm`). None: from scratch.

    Returns:
        The best network (by validation PR-AUC), its preprocessor and the training history.
    """
    return train_shard(Shard.whole(train_df, val_df), params, on_epoch, init)


def train_shard(
    shard: Shard,
    params: TrainParams | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    init: tuple[FraudNet, Preprocessor] | None = None,
) -> TrainResult:
    """:func:`train` on this process's shard; data-parallel (DDP) when ``torch.distributed`` is initialized.

    Every process gets the same result: statistics, positive weight, validation scores and the early-stopping
    decision are computed over all shards.

    Raises:
        ValueError: The training or validation split lacks positive or negative labels.
    """
    params = params or TrainParams()
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(params.num_threads or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(shard, params, on_epoch, Ranks(), init)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _train(
    shard: Shard,
    params: TrainParams,
    on_epoch: Callable[[dict[str, float]], None] | None,
    ranks: Ranks,
    init: tuple[FraudNet, Preprocessor] | None = None,
) -> TrainResult:
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)

    preprocessor = _fit_preprocessor(shard.train, ranks) if init is None else init[1]
    x_num, x_cat = preprocessor.transform(shard.train)
    y = torch.from_numpy(shard.train[LABEL].to_numpy(np.float32))
    v_num, v_cat = preprocessor.transform(shard.val)
    v_y = ranks.gather(torch.from_numpy(shard.val[LABEL].to_numpy(np.float32)), shard.val_sizes).numpy()
    n = shard.n_train
    positives, rows = ranks.sum(np.array([y.double().sum().item(), len(y)]))
    if rows != n:
        raise ValueError(f"the shards hold {rows:.0f} training rows, not {n}")
    if not 0 < positives < n or not 0 < v_y.sum() < len(v_y):
        raise ValueError("training and validation data both need positive and negative labels")

    pos_weight = _resolve_pos_weight(params, positives, n)
    if init is None:
        net = FraudNet(
            preprocessor.mean, preprocessor.std, preprocessor.cardinalities, params.hidden, params.dropout
        )
    else:  # a trained net had the prior shift of its loss undone: restore it for this loss (undone below)
        net = copy.deepcopy(init[0]).train()
        with torch.no_grad():
            net.output_bias.add_(math.log(pos_weight))
    # DDP all-reduces the gradients during backward; one process needs no wrapper. The buffers (the numeric
    # statistics) are equal everywhere already: no broadcast before every forward pass.
    model = (
        torch.nn.parallel.DistributedDataParallel(net, forward_sync_buffers=False) if ranks.world > 1 else net
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight), reduction="sum")
    optimizer = torch.optim.Adam(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    dropout = SharedDropout(net, params.seed)

    history: list[dict[str, float]] = []
    best_state: dict[str, Any] = copy.deepcopy(net.state_dict())
    best_epoch, best_pr_auc, seen, train_seconds = 0, -1.0, 0, 0.0
    low, high = shard.train_offset, shard.train_offset + len(y)
    lead = ranks.rank == 0
    epochs = progress_bar(
        range(1, params.epochs + 1), desc="train", unit="epoch", disable=not (params.progress and lead)
    )
    try:
        for epoch in epochs:
            net.train()
            dropout.take_over()
            started = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            loss_sum = 0.0
            for i in range(0, n, params.batch_size):
                idx = order[i : i + params.batch_size]
                if ranks.world == 1:
                    rows_here, local = None, idx
                else:  # this process's rows of the global batch, as positions in the batch and in the shard
                    rows_here = ((idx >= low) & (idx < high)).nonzero().squeeze(1)
                    local = idx[rows_here] - low
                dropout.set_batch(len(idx), rows_here)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_num[local], x_cat[local]), y[local])
                # The global batch mean: DDP averages the processes' gradients, hence x world.
                (loss * (ranks.world / len(idx))).backward()
                optimizer.step()
                loss_sum += loss.item()
            dropout.set_batch(0, None)
            train_seconds += time.perf_counter() - started
            seen += n

            (total_loss,) = ranks.sum(np.array([loss_sum]))
            logits = ranks.gather(predict_logits(net, v_num, v_cat), shard.val_sizes)
            val_pr_auc = float(average_precision_score(v_y, logits.numpy()))
            entry = {"epoch": epoch, "train_loss": total_loss / n, "val_pr_auc": val_pr_auc}
            history.append(entry)
            epochs.set_postfix(loss=f"{entry['train_loss']:.4f}", val_pr_auc=f"{val_pr_auc:.4f}")
            if on_epoch is not None:
                on_epoch(entry)
            if val_pr_auc > best_pr_auc + params.min_delta:
                best_epoch, best_pr_auc = epoch, val_pr_auc
                best_state = copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= params.patience:
                if lead:
                    log.info("early stop", extra={"epoch": epoch, "best_epoch": best_epoch})
                break
    finally:
        dropout.remove()
        epochs.close()

    net.load_state_dict(best_state)
    with torch.no_grad():
        net.output_bias.sub_(math.log(pos_weight))  # undo the prior shift of the weighted loss
    net.eval()
    samples_per_second = seen / train_seconds if train_seconds > 0 else float("nan")
    if lead:
        log.info(
            "trained",
            extra={
                "best_epoch": best_epoch,
                "val_pr_auc": best_pr_auc,
                "samples_per_second": samples_per_second,
                "processes": ranks.world,
            },
        )
    return TrainResult(
        net=net,
        preprocessor=preprocessor,
        history=history,
        best_epoch=best_epoch,
        best_val_pr_auc=best_pr_auc,
        samples_per_second=samples_per_second,
        pos_weight=pos_weight,
        stopped_early=len(history) < params.epochs,
        params=params,
    )


def log_training(result: TrainResult, params: TrainParams | None = None) -> None:
    """Log params, per-epoch metrics (step = epoch) and the training summary to the active MLflow run."""
    import mlflow  # imported here: training itself must not need MLflow

    params = params or result.params
    mlflow.log_params({k: str(v) if isinstance(v, tuple) else v for k, v in params.model_dump().items()})
    mlflow.log_param("pos_weight_resolved", result.pos_weight)
    for entry in result.history:
        step = int(entry["epoch"])
        mlflow.log_metrics({"train_loss": entry["train_loss"], "val_pr_auc": entry["val_pr_auc"]}, step=step)
    mlflow.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "best_val_pr_auc": result.best_val_pr_auc,
            "samples_per_second": result.samples_per_second,
            "epochs_run": len(result.history),
        }
    )
