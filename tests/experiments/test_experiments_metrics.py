"""The money view per arm from predictions joined with chargebacks, and its units for the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relearn.experiments.metrics import arm_metrics, card_losses, unit_stats
from relearn.experiments.settings import ExperimentSettings

SETTINGS = ExperimentSettings(
    alert_budget=0.25, review_cost=5.0, chargeback_fee=15.0, missed_fraud_factor=1.0
)


def joined() -> pd.DataFrame:
    """Two arms, 8 predictions over 4 cards each; 0.25 of 8: 2 alerts per arm (ties at the threshold too)."""
    a = {
        "user_id": ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"],
        "score": [0.9, 0.8, 0.1, 0.2, 0.3, 0.05, 0.01, 0.02],
        "label": [1, 0, 0, 1, 0, 0, 0, 1],
        "amount": [50.0, 10, 10, 100, 10, 10, 10, 200],
    }
    b = {
        "user_id": ["v1", "v1", "v2", "v2", "v3", "v3", "v4", "v4"],
        "score": [0.9, 0.5, 0.5, 0.1, 0.2, 0.3, 0.05, 0.01],
        "label": [0, 1, 1, 0, 0, 0, 0, 0],
        "amount": [10.0, 70, 30, 10, 10, 10, 10, 10],
    }
    return pd.concat([pd.DataFrame(a).assign(arm="a"), pd.DataFrame(b).assign(arm="b")], ignore_index=True)


def test_money_view_per_arm():
    m = arm_metrics(joined(), SETTINGS)
    a, b = m["a"], m["b"]
    # a: flags 0.9 (fraud, caught) and 0.8; misses the frauds of 100 and 200.
    assert (a.alerts, a.caught, a.frauds) == (2, 1, 3)
    assert a.fraud_amount_missed == 300.0
    assert a.review_cost == 10.0
    assert a.loss == 10.0 + 300.0 + 2 * 15.0
    assert a.loss_per_card == pytest.approx(a.loss / 4)
    assert (a.precision_at_budget, a.recall_at_budget) == (0.5, pytest.approx(1 / 3))
    # b: the threshold is the 2nd score, 0.5, tied: both 0.5 rows are flagged as serving would flag them.
    assert (b.alerts, b.caught, b.frauds, b.fraud_amount_missed) == (3, 2, 2, 0.0)
    assert b.loss == 15.0 and b.recall_at_budget == 1.0
    assert b.as_dict()["arm"] == "b"


def test_card_losses_are_the_test_units():
    losses = card_losses(joined(), SETTINGS)
    assert sorted(losses["a"].tolist()) == [0.0, 10.0, 115.0, 215.0]  # u1: 2 reviews; u2: 100+15; u4: 200+15
    assert sorted(losses["b"].tolist()) == [0.0, 0.0, 5.0, 10.0]
    stats = unit_stats(joined(), SETTINGS)
    assert stats["a"].n == 4 and stats["a"].mean == pytest.approx(85.0)
    assert stats["a"].var == pytest.approx(np.var([0.0, 10.0, 115.0, 215.0], ddof=1))


def test_costs_come_from_settings(monkeypatch):
    monkeypatch.setenv("RELEARN_EXPERIMENT_REVIEW_COST", "1")
    monkeypatch.setenv("RELEARN_EXPERIMENT_CHARGEBACK_FEE", "0")
    monkeypatch.setenv("RELEARN_EXPERIMENT_ALERT_BUDGET", "0.25")
    assert arm_metrics(joined())["a"].loss == 2.0 + 300.0


def test_missing_columns_are_refused():
    with pytest.raises(ValueError, match="lack columns"):
        arm_metrics(joined().drop(columns="amount"), SETTINGS)
