"""The demo's A/B experiment (``--experiment ab``) in pieces, without a full demo run: the experiment the
transformer reads, the plan from the champion's labelled traffic, the join with the chargebacks received,
the analysis by the experiments' code and the report's section."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relearn.demo import experiment
from relearn.experiments.assignment import Split, assign_many
from relearn.experiments.routing import RunningExperiment

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-02-01", tz="UTC")


def replayed(noise: dict[str, float], cards: int, days: int, seed: int, salt: str = "s") -> tuple:
    """Replay records (as the demo's Outcome.records) and chargebacks of traffic scored by each card's arm."""
    rng = np.random.default_rng(seed)
    per_card = rng.poisson(5, cards) + 1
    user = np.repeat([f"card-{i}" for i in range(cards)], per_card)
    n = len(user)
    arms = list(noise)
    arm = (
        assign_many(user, salt, Split.of({arms[0]: 50, arms[-1]: 50}))
        if len(arms) > 1
        else np.full(n, arms[0])
    )
    start = np.repeat(rng.uniform(0, days, cards), per_card)
    when = T0 + pd.to_timedelta(np.minimum(start + rng.exponential(2, n), days - 0.01), unit="D")
    fraud = rng.random(n) < 0.02
    sd = pd.Series(arm).map(noise).to_numpy(np.float64)
    records = pd.DataFrame(
        {
            "transaction_id": [f"tx-{seed}-{i}" for i in range(n)],
            "user_id": user,
            "amount": rng.lognormal(4.5, 0.3, n),
            "event_timestamp": when.as_unit("us"),  # as the demo's world reads back from Parquet
            "code": 0,
            "score": fraud + rng.normal(0, 1, n) * sd,
            "model_version": arm,
        }
    )
    labels = pd.DataFrame(
        {
            "transaction_id": records["transaction_id"][fraud],
            "chargeback_timestamp": when[fraud] + pd.to_timedelta(rng.exponential(1, fraud.sum()), unit="D"),
        }
    )
    return records, labels


def test_the_demo_experiment_from_start_to_the_report_section(tmp_path, monkeypatch) -> None:
    home = tmp_path / "run"
    monkeypatch.setenv("RELEARN_HOME", str(home))  # what the demo's transformer runs with
    from relearn.experiments.store import default_store

    assert default_store() == experiment.store_path(home), "the store the transformer reads"
    history_records, history_labels = replayed({"1": 0.5}, 3000, 10, seed=1)
    no_labels = experiment.joined(history_records, history_labels.iloc[:0])
    assert "no labels flowing" in experiment.start(home, "1", "2", no_labels)["refused"]
    assert not experiment.store_path(home).exists(), "refused: nothing written"

    started = experiment.start(home, "1", "2", experiment.joined(history_records, history_labels))
    assert started["split"] == {"1": 50, "2": 50} and "within" in started["plan"]
    name, _, split = RunningExperiment(experiment.store_path(home)).current()
    assert (name, split.as_dict()) == ("demo-ab", {"1": 50, "2": 50})
    assert (
        "exists (running)"
        in experiment.start(home, "1", "3", experiment.joined(history_records, history_labels))["refused"]
    )

    records, labels = replayed({"1": 1.0, "2": 0.1}, 6000, 14, seed=2)  # v2 separates frauds better
    until = T0 + 14 * DAY
    frame = experiment.joined(records, labels, until=until - 5 * DAY)
    assert frame["label"].sum() < experiment.joined(records, labels, until=until)["label"].sum(), (
        "received only"
    )
    summary = experiment.finish(
        home, experiment.joined(records, labels, until), T0.timestamp(), tmp_path / "report"
    )
    assert summary["decision"] == "winner" and summary["winner"] == "2"
    assert summary["upper"] < 0 and summary["looks"] > 0
    assert summary["arms"]["2"]["loss_per_card"] < summary["arms"]["1"]["loss_per_card"]
    from relearn.experiments.store import ExperimentStore

    record = ExperimentStore(experiment.store_path(home)).get("demo-ab")
    assert record["status"] == "stopped" and record["result"]["2"]["winner"] == "2"
    page = experiment.section(summary)
    assert "winner v2" in page and "v1 (control)" in page and "data:image/png;base64," in page
    assert experiment.section(None) == ""


def test_the_loop_and_report_hooks_start_and_report_the_experiment(tmp_path) -> None:
    """What driver.Driver._deploy and report.write call, on the driver's and outcome's attributes."""
    from types import SimpleNamespace

    from relearn.demo.driver import Timeline
    from relearn.demo.replay import Record
    from relearn.demo.settings import DemoSettings

    assert DemoSettings(experiment="ab").experiment == "ab" and DemoSettings().experiment == "none"
    history, labels = replayed({"1": 0.5}, 3000, 10, seed=1)
    live, live_labels = replayed({"1": 1.0, "2": 0.1}, 6000, 14, seed=2)
    live["event_timestamp"] += 10 * DAY
    live_labels["chargeback_timestamp"] += 10 * DAY
    # While the challenger's predictor starts (two stream days here) the champion answers every card.
    starting = live["event_timestamp"] < T0 + 12 * DAY
    live.loc[starting, "model_version"] = "1"
    stream = pd.concat([history, live], ignore_index=True)
    record = Record(len(stream))
    record.code[:], record.score[:], record.version[:] = 0, stream["score"], stream["model_version"]
    world = SimpleNamespace(
        stream=stream.drop(columns=["code", "score", "model_version"]),
        labels=pd.concat([labels, live_labels], ignore_index=True),
    )
    replay = SimpleNamespace(record=record, position=len(history), sim_time=T0 + 12 * DAY)
    driver = SimpleNamespace(
        replay=replay,
        world=world,
        home=tmp_path,
        backend=SimpleNamespace(state=lambda: SimpleNamespace(stable="1")),
    )
    timeline = Timeline()
    # The loop stamps the event with the retraining's end; the arms route from the store's write.
    timeline.add("experiment-start", sim=T0 + 10 * DAY, **experiment.start_in_demo(driver, "2"))
    since = T0 + 12 * DAY + pd.Timedelta(microseconds=1)  # after the last request sent before the write
    assert timeline.first("experiment-start")["since"] == since.isoformat()
    assert timeline.first("experiment-start")["split"] == {"1": 50, "2": 50}
    timeline.add("replay-end", sim=T0 + 24 * DAY)
    records = pd.concat([world.stream, record.frame()], axis=1)
    outcome = SimpleNamespace(timeline=timeline, records=records, world=world, home=tmp_path)
    page = experiment.report_section(outcome, tmp_path / "report")
    assert "A/B experiment" in page and "winner v2" in page, page[:300]
    routed = live[~starting]  # only the cards' answers once the arms route count
    cards = routed.loc[routed["model_version"] == "1", "user_id"].nunique()
    assert f"<td>v1 (control)</td><td>{cards}</td>" in page
    assert experiment.report_section(SimpleNamespace(timeline=Timeline()), tmp_path) == ""


def test_the_terminal_summary_names_the_experiments_outcome() -> None:
    from relearn.demo.report import evidence_lines

    tested = {"decision": "winner", "winner": "2", "effect": -9.5, "lower": -14.25, "upper": -3.0, "looks": 7}
    line = experiment.headline(tested)
    assert line == "A/B experiment: winner v2: effect -9.50 per card [-14.25, -3.00] after 7 daily looks"
    assert line in evidence_lines({"experiment": line})
    assert experiment.headline({"error": "refused: no labels flowing yet"}).endswith("no labels flowing yet")
    assert experiment.headline(None) is None
