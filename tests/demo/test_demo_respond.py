"""The demo acts on each alert's response: a page starts nothing, a recalibration runs
relearn.model.recalibrate instead of the training pipeline, and the report lists the choices (no stack)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from relearn.demo.driver import Driver, Timeline
from relearn.demo.respond import response_lines, responses
from relearn.demo.settings import DemoSettings
from relearn.demo.world import World

SIM = pd.Timestamp("2026-01-10T12:00", tz="UTC")


class _Procs:
    """Records the commands the driver starts; each 'exits' with 1 at once."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def start(self, name: str, argv: list[str], **env: str) -> SimpleNamespace:
        self.started.append((name, argv))
        return SimpleNamespace(process=SimpleNamespace(wait=lambda: 1), log=self.logs / f"{name}.log")


def _driver(tmp_path: Path) -> tuple[Driver, _Procs]:
    procs = _Procs(tmp_path)
    stack = SimpleNamespace(state=tmp_path / "state.json", procs=procs)
    stream, empty = pd.DataFrame(index=range(2200)), pd.DataFrame()
    world = World("test", tmp_path / "lake", stream, empty, empty, empty, SIM, SIM, SIM)
    replay = SimpleNamespace(sim_time=SIM, held=threading.Event())
    settings = DemoSettings(home=tmp_path, live_days=22.0, rate=40.0)
    return Driver(settings, stack, Timeline(), replay, world, tmp_path), procs


def test_a_page_starts_nothing_and_a_recalibration_runs_the_recalibrate_step(tmp_path):
    driver, procs = _driver(tmp_path)
    driver.alert(0.0, {"kind": "drift", "track": "stable", "response": "page", "why": "data bug: units"})
    assert driver.retrain_at is None and driver.phase.startswith("paged")

    driver.alert(0.0, {"kind": "quality", "track": "stable", "response": "recalibrate", "why": "prior shift"})
    assert driver.retrain_at == SIM + pd.Timedelta(days=driver.settings.retrain_after_days)
    driver._start_retraining(driver.retrain_at)
    driver.retraining.join(10)
    ((name, argv),) = procs.started
    assert name == "retrain-1" and argv[1:3] == ["-m", "relearn.model.recalibrate"]
    assert argv[argv.index("--inference-log") + 1] == str(tmp_path / "drift" / "inference-log.sqlite3")
    # 2,200 requests over 22 days at 40/s: 2.5 s of wall time a day; labels mature after label_maturity_days
    maturity = float(argv[argv.index("--maturity-seconds") + 1])
    assert maturity == driver.settings.label_maturity_days * 2.5
    assert "error" in driver.retrain_result  # the recorded step 'failed': the demo says so, deploys nothing
    start = next(e for e in driver.timeline.events if e["kind"] == "retrain-start")
    assert start["response"] == "recalibrate"

    lines = response_lines(responses(driver.timeline.events))
    assert lines == [
        "at 2026-01-10 12:00, response to the drift alert: page (data bug: units)",
        "at 2026-01-10 12:00, response to the quality alert: recalibrate (prior shift)",
    ]


def test_the_report_lists_one_line_per_episode_not_per_repeated_alert():
    def alert(hour: int, kind: str, response: str, why: str, track: str = "stable") -> dict:
        sim = (SIM + pd.Timedelta(hours=hour)).isoformat()
        return {"sim": sim, "kind": kind, "track": track, "response": response, "why": why}

    items = [
        alert(0, "quality", "retrain", "ROC-AUC 0.79"),
        alert(6, "quality", "retrain", "ROC-AUC 0.72"),  # the same open incident, re-posted
        alert(7, "drift", "retrain", "canary", track="canary"),  # another track: not listed
        alert(9, "quality", "retrain", "ROC-AUC 0.70"),
        alert(12, "drift", "page", "data bug: units"),
        alert(20, "quality", "retrain", "ROC-AUC 0.60"),  # a new episode after the page
    ]
    assert response_lines(items) == [
        "at 2026-01-10 12:00, response to the quality alert: retrain (ROC-AUC 0.79); "
        "2 more alert(s) of this episode until 2026-01-10 21:00",
        "at 2026-01-11 00:00, response to the drift alert: page (data bug: units)",
        "at 2026-01-11 08:00, response to the quality alert: retrain (ROC-AUC 0.60)",
    ]


def test_a_page_cancels_a_retraining_not_yet_started(tmp_path):
    driver, procs = _driver(tmp_path)
    driver.alert(0.0, {"kind": "drift", "track": "stable", "response": "retrain", "why": "covariate drift"})
    assert driver.retrain_at is not None
    driver.alert(0.0, {"kind": "drift", "track": "stable", "response": "page", "why": "data bug: nulls"})
    assert driver.retrain_at is None and driver.phase.startswith("paged") and procs.started == []


def test_retrain_is_the_default_response(tmp_path):
    driver, procs = _driver(tmp_path)
    driver.alert(0.0, {"kind": "drift", "track": "stable"})  # a detector without responses
    driver._start_retraining(SIM)
    driver.retraining.join(10)
    ((_, argv),) = procs.started
    assert argv[1:3] == ["-m", "pipelines.run"]


def test_a_page_is_the_decision_the_replay_stops_after(tmp_path):
    """A data bug run ends like a rollout's: after_decision_days after the page, not at the stream's end."""
    driver, _ = _driver(tmp_path)
    driver.alert(0.0, {"kind": "drift", "track": "stable", "response": "page", "why": "data bug: nulls"})
    assert driver.decided == SIM and not driver.done()
    driver.replay.sim_time = SIM + pd.Timedelta(days=driver.settings.after_decision_days)
    assert driver.done()
    assert [e["kind"] for e in driver.timeline.events] == ["alert", "paged"]


def test_after_a_refused_retraining_the_next_waits_for_labels_newer_than_its_data(tmp_path):
    """The first alert waits retrain_after_days for the drifted labels. The stream held while the refused
    run trained, so no label matured meanwhile: the retry waits retrain_after_days after that run (a run
    sooner would see the same data), and no longer if the next alert comes later than that."""
    driver, _ = _driver(tmp_path)
    wait = pd.Timedelta(days=driver.settings.retrain_after_days)
    quality = {"kind": "quality", "track": "stable", "response": "retrain", "why": "concept drift"}
    driver.alert(0.0, quality)
    assert driver.retrain_at == SIM + wait
    driver.retrain_at = None  # as if it ran: the gate refused the model
    driver._deploy({"model_version": 2, "gate": "FAILED: recall_at_budget gain -0.05 is not significant"})
    assert driver.decided is None and driver.phase == "replay" and driver.refused_at == SIM
    driver.replay.sim_time = SIM + pd.Timedelta(days=1)  # an alert soon after the refusal
    driver.alert(0.0, quality)
    assert driver.retrain_at == SIM + wait
    driver.retrain_at, driver.replay.sim_time = None, SIM + 2 * wait  # one long after it: at once
    driver.alert(0.0, quality)
    assert driver.retrain_at == SIM + 2 * wait


def test_a_covariate_drift_retraining_fine_tunes_the_champion(tmp_path):
    """The incident's train_mode (covariate drift: auto) reaches the training pipeline's command."""
    driver, procs = _driver(tmp_path)
    why = "covariate drift: inputs ['log_amount'] drifted"
    incident = {"kind": "drift", "track": "stable", "response": "retrain", "why": why, "train_mode": "auto"}
    driver.alert(0.0, incident)
    driver._start_retraining(driver.retrain_at)
    driver.retraining.join(10)
    ((_, argv),) = procs.started
    assert argv[1:3] == ["-m", "pipelines.run"] and argv[argv.index("--train-mode") + 1] == "auto"
    start = next(e for e in driver.timeline.events if e["kind"] == "retrain-start")
    assert start["train_mode"] == "auto"


def test_the_report_names_the_promoted_versions_gate_not_the_first_refusal():
    from relearn.demo.report_facts import gate_line

    ends = [
        {"kind": "retrain-end", "version": "2", "gate": "FAILED: recall gain not significant"},
        {"kind": "alert"},
        {"kind": "retrain-end", "version": "3", "gate": "PASSED: recall +0.05"},
    ]
    assert gate_line(ends, "3") == "v3 (retraining 2 of 2): PASSED: recall +0.05"
    assert gate_line(ends, "1") == "v3 (retraining 2 of 2): PASSED: recall +0.05"  # none promoted: the last
    assert gate_line(ends[:1], "1") == "v2 (the retraining): FAILED: recall gain not significant"
    assert gate_line([], "1") is None


def test_the_streams_clock_holds_while_a_retraining_runs(tmp_path):
    """A pipeline's minutes would be days of the demo's compressed stream: the replay is held from the
    retraining's start until its outcome is handled (here it fails), then runs again."""
    driver, _ = _driver(tmp_path)
    driver.alert(0.0, {"kind": "drift", "track": "stable", "response": "retrain", "why": "covariate drift"})
    driver._start_retraining(driver.retrain_at)
    assert driver.replay.held.is_set() and driver.phase.startswith("retraining")
    driver.retraining.join(10)
    assert driver.replay.held.is_set()  # until the driver has handled the outcome
    driver.tick()
    assert not driver.replay.held.is_set() and driver.retraining is None
    assert [e["kind"] for e in driver.timeline.events][-1] == "retrain-failed"


def test_no_retraining_is_scheduled_while_a_challenger_is_being_evaluated(tmp_path):
    """A retraining holds the stream, which would starve the shadow, canary or A/B test of traffic."""
    driver, procs = _driver(tmp_path)
    driver.deployed = True
    driver.alert(0.0, {"kind": "quality", "track": "stable", "response": "retrain", "why": "concept drift"})
    assert driver.retrain_at is None and procs.started == []


def test_the_summary_says_why_a_canary_was_rolled_back():
    from relearn.demo.report import evidence_lines

    reason = "backtest failed: recall_at_budget -0.12 [-0.20, -0.06]"
    assert f"rolled back: {reason}" in evidence_lines({"rollback": reason, "responses": []})
    assert not any(line.startswith("rolled back") for line in evidence_lines({"responses": []}))
