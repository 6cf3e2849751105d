"""An experiment end to end on joined predictions: sticky arms, daily looks, the better model wins."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from relearn.experiments.analysis import DAY_S, analyze, analyze_all, window_units
from relearn.experiments.assignment import Split, assign_many
from relearn.experiments.cli import main
from relearn.experiments.result import Decision, mlflow_tags
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore

SPLIT = Split.of({"v7": 50, "v8": 50})
SETTINGS = ExperimentSettings(alert_budget=0.01, min_units=500, unit_window_days=3, label_maturity_days=2)


def traffic(
    noise: dict[str, float], seed: int, cards: int = 20_000, days: int = 21, split: Split = SPLIT
) -> pd.DataFrame:
    """Transactions of ``cards`` cards over ``days`` days, scored by the card's arm; a model's score is the
    fraud label plus Gaussian noise of sd ``noise[arm]`` (less noise: a better model)."""
    rng = np.random.default_rng(seed)
    per_card = rng.poisson(6, cards) + 1
    user = np.repeat(np.arange(cards), per_card).astype(str)
    n = len(user)
    enrolled = np.repeat(rng.uniform(0, days * DAY_S, cards), per_card)  # cards arrive over the days
    arm = assign_many((f"card-{u}" for u in user), "salt-19", split)
    label = rng.random(n) < 0.01
    sd = pd.Series(arm).map(noise).to_numpy(np.float64)
    return pd.DataFrame(
        {
            "user_id": user,
            "arm": arm,
            "time": np.minimum(enrolled + rng.exponential(3 * DAY_S, n), days * DAY_S - 1),
            "label": label.astype(int),
            "amount": rng.lognormal(4.5, 1.0, n),
            "score": label + rng.normal(0, 1, n) * sd,
        }
    )


def planned_tau(seed: int) -> float:
    """The plan's tau: 10 % of the control's loss per card, measured on earlier (pilot) traffic."""
    pilot = traffic({"v7": 0.5, "v8": 0.5}, seed)
    return 0.1 * window_units(pilot, 21 * DAY_S, SETTINGS)["v7"].mean


def test_the_better_model_wins_on_money():
    frame = traffic({"v7": 0.5, "v8": 0.3}, seed=1)
    assert frame.groupby("user_id")["arm"].nunique().max() == 1  # no card sees two arms
    result, days, looks = analyze("ab1", frame, "v7", "v8", tau=planned_tau(99), settings=SETTINGS)
    assert result.decision == Decision.WINNER and result.winner == "v8"
    assert result.upper < 0 and len(looks) == len(days) and days[-1] == 21
    assert days[0] >= 3 + 2  # the first cards count once their window closed and their labels matured
    assert all(h.lower <= h.effect <= h.upper for h in looks)
    arms = result.arms
    assert arms["v8"]["loss_per_card"] < arms["v7"]["loss_per_card"]
    assert arms["v8"]["recall_at_budget"] > arms["v7"]["recall_at_budget"]
    # The test's samples: cards whose window closed and labels matured, a part of all the cards seen.
    assert result.samples == {"v7": looks[-1].n_control, "v8": looks[-1].n_treatment}
    assert 0.5 * arms["v7"]["cards"] < result.samples["v7"] < arms["v7"]["cards"]


def test_equal_models_show_no_winner():
    frame = traffic({"v7": 0.4, "v8": 0.4}, seed=2)
    result, _, looks = analyze("aa", frame, "v7", "v8", tau=planned_tau(98), settings=SETTINGS)
    assert result.decision == Decision.RUNNING and result.winner is None
    assert all(not h.significant for h in looks) and result.lower < 0 < result.upper
    assert all(h.lower <= h.effect <= h.upper for h in looks)


def test_three_arms_each_against_the_control_at_a_split_alpha():
    split = Split.of({"v7": 34, "v8": 33, "v9": 33})
    frame = traffic({"v7": 0.5, "v8": 0.5, "v9": 0.3}, seed=5, cards=30_000, split=split)
    results = analyze_all("abc", frame, "v7", tau=planned_tau(97), settings=SETTINGS)
    assert sorted(results) == ["v8", "v9"]
    assert results["v9"][0].winner == "v9" and results["v8"][0].winner is None
    assert all(h.p_value > SETTINGS.alpha / 2 for h in results["v8"][2])
    tags = mlflow_tags(results["v9"][0])
    assert (
        tags["relearn.experiment.abc.decision"] == "winner" and tags["relearn.experiment.abc.winner"] == "v9"
    )


def test_analyze_command_writes_the_report_and_stops_when_decided(tmp_path, monkeypatch, capsys):
    for key, value in {"UNIT_WINDOW_DAYS": "3", "LABEL_MATURITY_DAYS": "2", "MIN_UNITS": "500"}.items():
        monkeypatch.setenv(f"RELEARN_EXPERIMENT_{key}", value)
    home = [
        "--no-registry",
        "--store",
        str(tmp_path / "s.json"),
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
    ]
    tau = planned_tau(99)
    plan = ["--cards-per-day", "1000", "--base-loss", str(tau * 10), "--loss-sd", "40"]
    assert main([*home, "start", "ab1", "--arm", "v7=50", "--arm", "v8=50", "--control", "v7", *plan]) == 0
    traffic({"v7": 0.5, "v8": 0.3}, seed=1).to_parquet(tmp_path / "joined.parquet")
    report = tmp_path / "report"
    argv = [
        *home,
        "analyze",
        "ab1",
        "--predictions",
        str(tmp_path / "joined.parquet"),
        "--report-dir",
        str(report),
    ]
    assert main(argv) == 0
    result = json.loads((report / "result.json").read_text())["v8"]
    assert result["decision"] == "winner" and result["winner"] == "v8"
    assert (report / "effect-v8.png").stat().st_size > 10_000
    record = ExperimentStore(tmp_path / "s.json").get("ab1")
    assert record["status"] == "stopped" and record["result"]["v8"]["winner"] == "v8"
    actions = [json.loads(line)["action"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert actions == ["experiment-start", "experiment-result", "experiment-stop"]
    capsys.readouterr()
    assert main(argv) == 2  # decided and stopped: nothing more to analyze
    assert "not running" in capsys.readouterr().err


def test_start_from_history_measures_the_plan_and_refuses_without_labels(tmp_path, monkeypatch, capsys):
    for key, value in {"UNIT_WINDOW_DAYS": "3", "LABEL_MATURITY_DAYS": "2"}.items():
        monkeypatch.setenv(f"RELEARN_EXPERIMENT_{key}", value)
    history = traffic({"v7": 0.5, "v8": 0.5}, seed=6).drop(columns="arm")
    history.to_parquet(tmp_path / "history.parquet")
    history.assign(label=0).to_parquet(tmp_path / "unlabelled.parquet")
    home = [
        "--no-registry",
        "--store",
        str(tmp_path / "s.json"),
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
    ]
    arms = ["--arm", "v7=50", "--arm", "v8=50", "--control", "v7"]
    assert main([*home, "start", "x", *arms, "--history", str(tmp_path / "unlabelled.parquet")]) == 2
    assert "no labels flowing" in capsys.readouterr().err and not (tmp_path / "s.json").exists()
    assert main([*home, "start", "ab1", *arms, "--history", str(tmp_path / "history.parquet")]) == 0
    plan = ExperimentStore(tmp_path / "s.json").get("ab1")["plan"]
    assert plan["units_per_day"] == pytest.approx(20_000 / 21, rel=0.01)  # 20k cards over 21 days
    complete = window_units(history.assign(arm="h"), history["time"].max() + 1, SETTINGS)["h"]
    assert plan["base_mean"] == pytest.approx(complete.mean) and plan["lag_days"] == 5
    assert "change is found with 80% power" in capsys.readouterr().out
