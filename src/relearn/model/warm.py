"""Warm-start (stateful) retraining: fine-tune the champion on the new rows instead of starting over.

*Designing Machine Learning Systems* (ch. 9): fine-tuning the model in production on fresh data costs a
fraction of a from-scratch run. relearn's policy:

- ``train_mode=auto`` (the policy): warm when a champion exists and is compatible, from scratch every
  ``scratch_every`` retrainings (warm starts pile up the champion's history; a periodic reset bounds it)
  and whenever the champion cannot be fine-tuned (another feature service, input layout, vocabulary or
  architecture, or inputs whose statistics moved too far for its standardization). The reason is logged
  and recorded on the MLflow run and model version.
- ``train_mode=warm``: the same checks, but an incompatible champion refuses the run (nothing is trained).
- ``train_mode=scratch``: the previous behaviour.

A warm start fine-tunes on the training rows newer than the champion's (its ``train_end`` tag), plus a
random sample of older rows, ``replay_fraction`` of the fine-tuning set, against forgetting. It keeps the
champion's preprocessor: the weights expect its standardization and vocabularies.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from relearn.errors import InvalidRequest
from relearn.features.spec import CATEGORICAL_INPUTS, FEATURE_SERVICE, LABEL, NUMERIC_INPUTS
from relearn.model.net import FraudNet, Preprocessor, signed_log1p
from relearn.model.train import TrainParams

log = logging.getLogger(__name__)

# Run and model-version tags (lineage): how the model was trained and from which version.
MODE_TAG, REASON_TAG, FROM_TAG = "train_mode", "train_mode_reason", "warm_started_from"
GENERATION_TAG, TRAIN_END_TAG = "warm_generation", "train_end"
LINEAGE_TAGS = (MODE_TAG, REASON_TAG, FROM_TAG, GENERATION_TAG, TRAIN_END_TAG)


class WarmStartRefused(InvalidRequest, ValueError):
    """``train_mode=warm`` with a champion that cannot be fine-tuned: the message names the setting."""


class RetrainPolicy(BaseModel):
    """How a retraining run chooses between fine-tuning the champion and training from scratch."""

    mode: Literal["auto", "warm", "scratch"] = Field(
        "auto", description="auto: warm when possible (else scratch, with the reason); warm: or refuse."
    )
    scratch_every: int = Field(
        5,
        ge=1,
        description="Every Nth retraining from scratch (after N - 1 warm starts in a row); 1: never warm.",
    )
    replay_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the fine-tuning rows sampled from the older rows (forgetting)."
    )
    lr_scale: float = Field(
        2.0, gt=0, le=10, description="Fine-tuning learning rate = lr x this (Adam restarts its moments)."
    )
    max_shift: float = Field(
        4.0,
        gt=0,
        description="Largest move of a numeric input's mean, in the champion's standard deviations.",
    )


@dataclass
class Champion:
    """The registered model a warm start fine-tunes: version, network, preprocessor and version tags."""

    version: str
    net: FraudNet
    preprocessor: Preprocessor
    tags: dict[str, str]

    @property
    def generation(self) -> int:
        """Warm starts in a row that led to this model (0: trained from scratch)."""
        try:
            return int(self.tags.get(GENERATION_TAG, "0"))
        except ValueError:
            return 0

    def train_end(self) -> pd.Timestamp | None:
        """The newest event time it was trained on: its tag, else the end of its data window, else None."""
        if TRAIN_END_TAG in self.tags:
            return pd.Timestamp(self.tags[TRAIN_END_TAG])
        start, _, days = self.tags.get("data_window", "").partition("+")  # "2026-02-02+24d"
        if not (start and days.endswith("d") and days[:-1].isdigit()):
            return None
        begin = pd.Timestamp(start)
        begin = begin.tz_localize("UTC") if begin.tzinfo is None else begin
        return begin + pd.Timedelta(days=int(days[:-1]))


@dataclass(frozen=True)
class Unavailable:
    """A champion that is registered but cannot be loaded (its artifact gone or unreadable)."""

    version: str
    error: str


@dataclass
class WarmPlan:
    """What the train step does: the mode and why, the rows to train on, the parameters, the start."""

    mode: Literal["warm", "scratch"]
    reason: str
    train_df: pd.DataFrame
    params: TrainParams
    champion: Champion | None = None
    new_rows: int = 0
    replay_rows: int = 0

    @property
    def init(self) -> tuple[FraudNet, Preprocessor] | None:
        """The network and preprocessor to fine-tune (None: from scratch)."""
        if self.mode == "scratch" or self.champion is None:
            return None
        return self.champion.net, self.champion.preprocessor

    def tags(self) -> dict[str, str]:
        """Lineage tags for the MLflow run (the register step copies them onto the model version)."""
        tags = {
            MODE_TAG: self.mode,
            REASON_TAG: self.reason,
            TRAIN_END_TAG: pd.Timestamp(self.train_df["event_timestamp"].max()).isoformat(),
            GENERATION_TAG: str(self.champion.generation + 1 if self.init is not None else 0),
        }
        if self.init is not None:
            tags[FROM_TAG] = self.champion.version
        return tags


def incompatibility(
    champion: Champion, params: TrainParams, frame: pd.DataFrame, max_shift: float = 4.0
) -> str | None:
    """Why ``champion`` cannot be fine-tuned on ``frame`` with ``params``, or None when it can."""
    pre, tags = champion.preprocessor, champion.tags
    service = tags.get("feature_service", FEATURE_SERVICE)
    if service != FEATURE_SERVICE:
        return f"feature set changed: champion v{champion.version} serves {service}, now {FEATURE_SERVICE}"
    if list(pre.numeric) != list(NUMERIC_INPUTS):
        changed = sorted(set(pre.numeric) ^ set(NUMERIC_INPUTS)) or ["their order"]
        return f"numeric inputs differ from champion v{champion.version}'s: {', '.join(changed)}"
    expected = {name: list(vocab) for name, vocab in CATEGORICAL_INPUTS.items()}
    if pre.vocabularies != expected:
        changed = [
            k
            for k in sorted(set(expected) | set(pre.vocabularies))
            if expected.get(k) != pre.vocabularies.get(k)
        ]
        return f"categories differ from champion v{champion.version}'s: {', '.join(changed) or 'their order'}"
    hidden = tuple(champion.net.config["hidden"])
    if hidden != tuple(params.hidden):
        return (
            f"architecture differs: champion v{champion.version} has hidden={hidden}, asked {params.hidden}"
        )
    values = signed_log1p(frame[list(NUMERIC_INPUTS)].to_numpy(np.float64))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: its mean is NaN, then 0
        means = np.nanmean(values, axis=0) if len(values) else np.zeros(len(pre.mean))
    shift = np.abs(np.nan_to_num(means, nan=0.0) - np.array(pre.mean)) / np.array(pre.std)
    worst = int(np.argmax(shift))
    if shift[worst] > max_shift:
        return (
            f"statistics moved: {NUMERIC_INPUTS[worst]}'s mean is {shift[worst]:.1f} standard deviations "
            f"from champion v{champion.version}'s (max_shift {max_shift})"
        )
    return None


def choose(
    policy: RetrainPolicy,
    champion: Champion | Unavailable | None,
    params: TrainParams,
    frame: pd.DataFrame,
    workers: int = 1,
) -> tuple[Literal["warm", "scratch"], str]:
    """The mode and the reason for it (see the module doc).

    Raises:
        WarmStartRefused: ``policy.mode`` is warm and the champion cannot be fine-tuned.
    """
    if policy.mode == "scratch":
        return "scratch", "train_mode=scratch"
    if workers > 1:
        reason = f"a warm start trains in one process (workers={workers})"
    elif champion is None:
        reason = "no champion to warm-start from"
    elif isinstance(champion, Unavailable):
        reason = f"champion v{champion.version} could not be loaded: {champion.error}"
    elif problem := incompatibility(champion, params, frame, policy.max_shift):
        reason = problem
    elif policy.mode == "auto" and champion.generation + 1 >= policy.scratch_every:
        reason = (
            f"from scratch every {policy.scratch_every} retrainings: champion v{champion.version} "
            f"ends {champion.generation} warm starts in a row"
        )
    else:
        return (
            "warm",
            f"champion v{champion.version} is compatible (warm start {champion.generation + 1} in a row)",
        )
    if policy.mode == "warm":
        raise WarmStartRefused(f"train_mode=warm refused: {reason}; nothing was trained")
    return "scratch", reason


def fine_tuning_rows(
    frame: pd.DataFrame, since: pd.Timestamp | None, replay_fraction: float, seed: int
) -> tuple[pd.DataFrame, int, int]:
    """The rows after ``since`` plus a sample of older ones: (rows, new, replayed).

    Without newer rows holding fraud (the same window again, or no ``since``), every row is fine-tuned on.
    """
    if since is None:
        return frame, len(frame), 0
    times = pd.to_datetime(frame["event_timestamp"], utc=True)
    newer = (times > since).to_numpy()
    new, old = frame[newer], frame[~newer]
    if new.empty or new[LABEL].sum() == 0:
        return frame, len(frame), 0
    wanted = round(len(new) * replay_fraction / (1 - replay_fraction))
    replay = old.sample(n=min(wanted, len(old)), random_state=seed)
    rows = pd.concat([replay, new]).sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    return rows, len(new), len(replay)


def plan(
    policy: RetrainPolicy,
    champion: Champion | Unavailable | None,
    train_df: pd.DataFrame,
    params: TrainParams,
    workers: int = 1,
) -> WarmPlan:
    """Choose the mode and prepare the run: rows, parameters (a scaled learning rate when warm)."""
    mode, reason = choose(policy, champion, params, train_df, workers)
    if mode == "scratch":
        known = champion if isinstance(champion, Champion) else None
        result = WarmPlan("scratch", reason, train_df, params, known, len(train_df), 0)
    else:
        rows, new, replayed = fine_tuning_rows(
            train_df, champion.train_end(), policy.replay_fraction, params.seed
        )
        tuned = params.model_copy(update={"lr": params.lr * policy.lr_scale})
        result = WarmPlan("warm", reason, rows, tuned, champion, new, replayed)
    log.info(
        "train mode",
        extra={
            "mode": result.mode,
            "reason": reason,
            "champion": champion.version if champion is not None else None,
            "new_rows": result.new_rows,
            "replay_rows": result.replay_rows,
        },
    )
    return result


def load_champion(settings: Any) -> Champion | Unavailable | None:
    """The registry's champion with its tags; None before the first registration."""
    from mlflow.exceptions import MlflowException

    from relearn.model import registry

    version = registry.get_alias_version(settings, registry.CHAMPION)
    if version is None:
        return None
    try:
        net, preprocessor = registry.load_torch(settings, version)
    except (OSError, ValueError, MlflowException) as exc:  # auto falls back to scratch, warm refuses
        return Unavailable(version, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return Champion(version, net, preprocessor, registry.get_version_tags(settings, version))


def run_lineage(settings: Any, run_id: str) -> dict[str, str]:
    """The warm-start lineage tags of a training run (for its model version)."""
    from mlflow import MlflowClient

    tags = MlflowClient(settings.tracking_uri()).get_run(run_id).data.tags
    return {key: tags[key] for key in LINEAGE_TAGS if key in tags}
