"""The money view per arm, from predictions joined with their chargebacks.

Each arm reviews its own top ``alert_budget`` share of scores (the rule of
:func:`relearn.model.evaluate.threshold_at_budget`, which serving uses too). A row's loss is what the
business pays for it: the review cost when it is flagged, the missed fraud (``missed_fraud_factor`` times
its amount plus the ``chargeback_fee``) when it is a fraud not flagged. The experiment's unit is the card,
as assignment is: a card's loss is the sum over its transactions, and the test compares the arms' mean
loss per card. Precision and recall at the budget are secondary metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from relearn.experiments.sequential import ArmStats
from relearn.experiments.settings import ExperimentSettings
from relearn.features.spec import LABEL
from relearn.model.evaluate import threshold_at_budget

COLUMNS = ("arm", "user_id", "score", LABEL, "amount")


@dataclass(frozen=True)
class ArmMetrics:
    """One arm's business and secondary metrics over its labelled predictions."""

    arm: str
    transactions: int
    cards: int
    frauds: int
    alerts: int
    caught: int
    fraud_amount_missed: float
    review_cost: float
    loss: float  # fraud_amount_missed * factor + fees + review_cost: the primary metric's total
    loss_per_card: float
    precision_at_budget: float | None
    recall_at_budget: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def row_losses(frame: pd.DataFrame, settings: ExperimentSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one arm: the loss and whether the row is flagged at the arm's budget threshold."""
    scores = frame["score"].to_numpy(np.float64)
    fraud = frame[LABEL].to_numpy().astype(bool)
    amounts = frame["amount"].to_numpy(np.float64)
    flagged = scores >= threshold_at_budget(scores, settings.alert_budget)
    missed = fraud & ~flagged
    loss = flagged * settings.review_cost + missed * (
        settings.missed_fraud_factor * amounts + settings.chargeback_fee
    )
    return loss, flagged


def _check(frame: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"joined predictions lack columns {missing} (need {list(COLUMNS)})")


def arm_metrics(frame: pd.DataFrame, settings: ExperimentSettings | None = None) -> dict[str, ArmMetrics]:
    """Every arm's metrics (``frame``: one row per labelled prediction with :data:`COLUMNS`)."""
    settings = settings or ExperimentSettings()
    _check(frame)
    out = {}
    for arm, rows in frame.groupby("arm", sort=True):
        loss, flagged = row_losses(rows, settings)
        fraud = rows[LABEL].to_numpy().astype(bool)
        amounts = rows["amount"].to_numpy(np.float64)
        caught = int((flagged & fraud).sum())
        cards = int(rows["user_id"].nunique())
        out[str(arm)] = ArmMetrics(
            arm=str(arm),
            transactions=len(rows),
            cards=cards,
            frauds=int(fraud.sum()),
            alerts=int(flagged.sum()),
            caught=caught,
            fraud_amount_missed=float(amounts[fraud & ~flagged].sum()),
            review_cost=float(flagged.sum() * settings.review_cost),
            loss=float(loss.sum()),
            loss_per_card=float(loss.sum() / cards),
            precision_at_budget=caught / int(flagged.sum()) if flagged.any() else None,
            recall_at_budget=caught / int(fraud.sum()) if fraud.any() else None,
        )
    return out


def card_losses(frame: pd.DataFrame, settings: ExperimentSettings | None = None) -> dict[str, np.ndarray]:
    """Per arm, each card's total loss: the units the sequential test compares."""
    settings = settings or ExperimentSettings()
    _check(frame)
    out = {}
    for arm, rows in frame.groupby("arm", sort=True):
        loss, _ = row_losses(rows, settings)
        out[str(arm)] = pd.Series(loss).groupby(rows["user_id"].to_numpy()).sum().to_numpy()
    return out


def unit_stats(frame: pd.DataFrame, settings: ExperimentSettings | None = None) -> dict[str, ArmStats]:
    """Per arm, the sufficient statistics of the loss per card (count, mean, variance)."""
    return {arm: ArmStats.of(values) for arm, values in card_losses(frame, settings).items()}
