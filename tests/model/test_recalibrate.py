"""Recalibration (the response to a prior shift): the champion's weights, a threshold re-fitted to the alert
budget on recent labelled traffic, registered as a new version in a real MLflow registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from relearn.features.spec import MODEL_INPUTS
from relearn.model.recalibrate import RecalibrationError, labelled_traffic, recalibrate
from relearn.model.registry import (
    CHALLENGER,
    CHAMPION,
    get_alias_version,
    get_version_tags,
    load_torch,
)
from relearn.model.train import TrainParams, time_split, train
from support.champion import prior_shift as _prior_shift
from support.champion import register_champion as _champion
from support.frames import synthetic_frame

BUDGET = 0.01


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small trained model registered as v1, the champion, with a stale threshold (one MLflow store)."""
    frame = synthetic_frame(10_000, seed=3)
    train_df, val_df, rest = time_split(frame, val_fraction=0.2, test_fraction=0.3)
    result = train(train_df, val_df, TrainParams(seed=3, epochs=2, progress=False))
    return _champion(result, train_df, tmp_path_factory.mktemp("recalibrate")), rest


def test_recalibration_registers_the_same_weights_with_a_threshold_at_the_budget(world):
    settings, rest = world
    traffic = _prior_shift(rest)
    with pytest.raises(RecalibrationError, match="min_rows=1000"):  # first: nothing may be registered
        recalibrate(settings, traffic.head(500), min_rows=1000)
    assert get_alias_version(settings, CHALLENGER) == "1"
    with pytest.raises(RecalibrationError, match="alias 'champion'"):
        recalibrate(settings.model_copy(update={"model_name": "no-such-model"}), traffic)
    summary = recalibrate(settings, traffic, alert_budget=BUDGET, min_rows=1000, min_frauds=10)

    assert (summary["model_version"], summary["recalibrated_from"]) == ("2", "1")
    assert summary["threshold_before"] == pytest.approx(0.2)
    assert summary["flagged_share_after"] == pytest.approx(BUDGET, abs=0.001)
    assert abs(summary["flagged_share_before"] - BUDGET) > 0.005  # the stale threshold missed the budget
    assert summary["gate"].startswith("PASSED")
    tags = get_version_tags(settings, 2)
    assert tags["recalibrated_from"] == "1" and float(tags["threshold"]) == summary["threshold_after"]
    # A challenger for the shadow / canary path; the champion stays until the rollout promotes it.
    assert get_alias_version(settings, CHALLENGER) == "2" and get_alias_version(settings, CHAMPION) == "1"
    (net1, _), (net2, _) = load_torch(settings, 1), load_torch(settings, 2)
    for (name, a), (_, b) in zip(net1.state_dict().items(), net2.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


class _Rows:
    """The ServedRows interface over a frame (two pages of inputs)."""

    def __init__(self, frame: pd.DataFrame, labels: dict[str, int]) -> None:
        self.frame, self.label_map, self.calls = frame, labels, []

    def labels(self, since: float, maturity_s: float, limit: int) -> dict[str, int]:
        self.calls.append(("labels", since, maturity_s, limit))
        return self.label_map

    def inputs(self, since: float, after: int) -> tuple[dict, int, bool]:
        self.calls.append(("inputs", since, after))
        page = self.frame.iloc[after : after + 50]
        rows = {f"t{after + i}": row for i, row in enumerate(page.to_dict("records"))}
        return rows, after + len(page), after + len(page) < len(self.frame)


def test_labelled_traffic_joins_the_labels_with_every_page_of_inputs(world):
    frame = world[1][list(MODEL_INPUTS)].head(120)
    labels = {f"t{i}": int(i % 7 == 0) for i in range(0, 120, 2)}  # half the rows labelled
    rows = _Rows(frame, labels)
    traffic = labelled_traffic(rows, 10.0, 60.0, 500)
    assert len(traffic) == 60 and traffic["label"].sum() == sum(labels.values())
    assert rows.calls[0] == ("labels", 10.0, 60.0, 500)
    assert [c[2] for c in rows.calls[1:]] == [0, 50, 100]
    np.testing.assert_allclose(traffic["log_amount"].to_numpy(), frame["log_amount"].to_numpy()[::2])
