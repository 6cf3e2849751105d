"""The bandit on real traffic: shares from the joined history into the store, the transformer's routing
follows them, the floor holds, stale rewards send everything to the champion, the shares are exported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from relearn.experiments.assignment import BUCKETS, Shares, assign_many
from relearn.experiments.bandit_live import replay, update
from relearn.experiments.cli import main
from relearn.experiments.exporter import ExperimentMetrics
from relearn.experiments.routing import RunningExperiment
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore
from relearn.features.spec import LABEL

DAY = 86400.0
T0 = 1.7e9  # the experiment's start (epoch s)
RECALL = {"v7": 0.5, "v8": 0.6, "v9": 0.8}  # v9 catches the most frauds at the budget
SETTINGS = ExperimentSettings(alert_budget=0.15, label_maturity_days=7, bandit_stale_days=3)


def history(days: int = 30, per_day: int = 600, seed: int = 0, recall=RECALL) -> pd.DataFrame:
    """Joined predictions of three arms: 10 % fraud; an arm's fraud scores high with its recall."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    arms = rng.choice(list(recall), n)
    fraud = rng.random(n) < 0.10
    caught = rng.random(n) < np.vectorize(recall.get)(arms)
    score = np.where(fraud & caught, rng.uniform(0.95, 1.0, n), rng.uniform(0.0, 0.9, n))
    return pd.DataFrame(
        {
            "arm": arms,
            "user_id": [f"card-{i}" for i in rng.integers(0, n // 3, n)],
            "score": score,
            LABEL: fraud.astype(int),
            "amount": rng.lognormal(3, 1, n),
            "time": T0 + np.sort(rng.uniform(0, days * DAY, n)),
        }
    )


def record(**bandit) -> dict:
    params = {"min_share": 0.05, "maturity_s": 7 * DAY, "stale_s": 3 * DAY, **bandit}
    split = {"v7": 34, "v8": 33, "v9": 33}
    return {
        "name": "b1",
        "kind": "bandit",
        "status": "running",
        "started": T0,
        "split": split,
        "control": "v7",
    } | {"bandit": params}


def test_the_best_arm_gets_most_traffic_and_every_arm_keeps_the_floor():
    out = update(record(), history(), now=T0 + 30 * DAY, settings=SETTINGS)
    shares = out["shares"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["v9"] > 0.85 and not out["bandit"]["fallback"]
    # v7 and v8 are clearly worse: their posterior chance of being best is ~0, the floor is what they keep.
    for arm in ("v7", "v8"):
        assert shares[arm] == pytest.approx(0.05, abs=2e-3) and shares[arm] >= 0.05 - 1e-9
    # Counted: only frauds whose labels matured (23 of the 30 days), caught at each arm's own budget.
    b = out["bandit"]
    frauds = {a: b["caught"][a] + b["missed"][a] for a in RECALL}
    assert all(400 < f < 520 for f in frauds.values()), frauds  # 23 days * 600 * 10 % / 3 = 460
    assert b["caught"]["v9"] / frauds["v9"] == pytest.approx(0.8, abs=0.04)
    # A larger floor is honoured the same way.
    wide = update(record(min_share=0.2), history(), now=T0 + 30 * DAY, settings=SETTINGS)["shares"]
    assert min(wide.values()) == pytest.approx(0.2, abs=2e-3)


def test_immature_outcomes_do_not_count():
    """v7 turns perfect in the last 7 days: those labels have not matured, the posterior ignores them."""
    base = history()
    late = base["time"] > T0 + 23 * DAY
    lucky = base.copy()
    v7 = late & (lucky["arm"] == "v7")
    lucky.loc[v7, LABEL] = (lucky.loc[v7, "score"] >= 0.95).astype(int)  # every fraud caught, many more
    now = T0 + 30 * DAY
    assert update(record(), lucky, now, SETTINGS)["bandit"] == update(record(), base, now, SETTINGS)["bandit"]


def test_stale_rewards_fall_back_to_the_champion():
    h = history(days=20)  # the last fraud happens on day 20; its label matures on day 27
    newest = h.loc[h[LABEL] == 1, "time"].max() + 7 * DAY
    fresh = update(record(), h, now=newest + 3 * DAY - 60, settings=SETTINGS)
    assert not fresh["bandit"]["fallback"] and fresh["shares"]["v9"] > 0.5
    stale = update(record(), h, now=newest + 3 * DAY + 60, settings=SETTINGS)
    assert stale["bandit"]["fallback"] and stale["shares"] == {"v7": 1.0, "v8": 0.0, "v9": 0.0}
    assert stale["bandit"]["reward_age_s"] == pytest.approx(3 * DAY + 60)
    # Before any label could mature the clock runs from the start plus the maturity.
    empty = h.iloc[:0]
    assert not update(record(), empty, T0 + 10 * DAY - 60, SETTINGS)["bandit"]["fallback"]
    assert update(record(), empty, T0 + 10 * DAY + 60, SETTINGS)["shares"]["v7"] == 1.0


@pytest.fixture
def cli(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("RELEARN_EXPERIMENT_ALERT_BUDGET", "0.15")
    store = tmp_path / "s.json"
    opts = ["--no-registry", "--store", str(store), "--audit-log", str(tmp_path / "audit.jsonl")]
    return store, lambda *argv: main([*opts, *argv])


def test_k_below_three_is_refused_naming_the_setting(cli, capsys):
    store, run = cli
    assert run("start", "b1", "--mode", "bandit", "--arm", "v7", "--arm", "v8", "--control", "v7") == 2
    assert "k >= 3 versions, got 2 (give --arm 3+ times" in capsys.readouterr().err
    assert not store.exists()
    assert (
        run(
            "start",
            "b1",
            "--mode",
            "bandit",
            "--arm",
            "v7=50",
            "--arm",
            "v8",
            "--arm",
            "v9",
            "--control",
            "v7",
        )
        == 2
    )
    assert "give every arm its percent" in capsys.readouterr().err and not store.exists()


def test_update_bandit_moves_the_transformers_routing_and_the_metrics(cli, tmp_path, capsys):
    store_path, run = cli
    argv = ["start", "b1", "--mode", "bandit", "--arm", "v7", "--arm", "v8", "--arm", "v9", "--control", "v7"]
    assert run(*argv) == 0
    capsys.readouterr()
    rec = ExperimentStore(store_path).get("b1")
    assert rec["kind"] == "bandit" and rec["split"] == {"v7": 34, "v8": 33, "v9": 33}
    metrics = ExperimentMetrics()
    serving = RunningExperiment(store_path, metrics=metrics)  # what each transformer replica holds
    cards = [f"card-{i}" for i in range(20_000)]
    _, before = serving.arms(cards)
    assert np.mean(before == "v9") == pytest.approx(0.33, abs=0.015)

    h = history(seed=1)
    started = rec["started"]
    # The history's clock is the test's: shift it so that the update runs 30 days after the start.
    h.assign(time=h["time"] - T0 + started).to_parquet(tmp_path / "joined.parquet")
    now = str(started + 30 * DAY)
    assert run("update-bandit", "b1", "--history", str(tmp_path / "joined.parquet"), "--now", now) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = ExperimentStore(store_path).get("b1")
    assert printed["shares"] == stored["shares"] and stored["shares"]["v9"] > 0.85
    _, after = serving.arms(cards)
    share_of = {a: float(np.mean(after == a)) for a in ("v7", "v8", "v9")}
    assert share_of == pytest.approx(stored["shares"], abs=0.01)
    # Sticky where possible: a card moves only when the shares' edges moved across its bucket.
    old, new = Shares.of({"v7": 0.34, "v8": 0.33, "v9": 0.33}), Shares.of(stored["shares"])
    moved_bound = np.abs(new.edges - old.edges).sum() / BUCKETS
    assert np.mean(before != after) <= moved_bound + 0.01
    again = assign_many(cards, stored["salt"], new)
    assert (again == after).all()  # every replica and restart computes the same arms
    # The shares are the gauges a transformer's /metrics shows.
    assert {a: metrics.arm_share.labels("b1", a)._value.get() for a in share_of} == stored["shares"]
    assert metrics.fallback.labels("b1")._value.get() == 0.0

    # Labels stop: a later update sends every card to the champion, and the metrics say so.
    later = str(started + 60 * DAY)
    assert run("update-bandit", "b1", "--history", str(tmp_path / "joined.parquet"), "--now", later) == 0
    _, fallback = serving.arms(cards)
    assert set(fallback) == {"v7"} and metrics.fallback.labels("b1")._value.get() == 1.0
    # A bandit is not analysed by the fixed-split test; stopped, its series disappear.
    assert (
        run("analyze", "b1", "--predictions", str(tmp_path / "joined.parquet"), "--report-dir", str(tmp_path))
        == 2
    )
    assert "is a bandit" in capsys.readouterr().err
    assert run("list") == 0
    assert capsys.readouterr().out == "b1\trunning\tfraud\tbandit v7=1.000 v8=0.000 v9=0.000\n"
    assert run("stop", "b1", "--reason", "done") == 0
    assert serving.arms(cards) is None
    assert "relearn_experiment_arm_share{" not in _exposition(metrics)


def _exposition(metrics: ExperimentMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_the_live_path_halves_the_regret_of_an_equal_split(tmp_path):
    """Store, daily update-bandit, the transformers' routing: 3 arms, labels 7 days late, 45 days."""
    out = replay(tmp_path / "s.json", {"v7": 0.60, "v8": 0.65, "v9": 0.70}, days=45, seed=1)
    assert out["frauds"] == pytest.approx(45 * 300, rel=0.02)
    assert out["equal_split"] == pytest.approx(out["frauds"] * 0.05)
    assert out["thompson"] <= 0.5 * out["equal_split"], out
    final = ExperimentStore(tmp_path / "s.json").get("replay")
    assert max(final["shares"], key=final["shares"].get) == "v9" and not final["bandit"]["fallback"]
