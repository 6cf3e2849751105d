"""``python -m relearn.experiments``: start (with its plan), status, stop, list; bad input changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from relearn.experiments.cli import main
from relearn.experiments.store import ExperimentStore

PLAN = ["--cards-per-day", "100000", "--base-loss", "0.75", "--loss-sd", "16"]


@pytest.fixture
def home(tmp_path):
    return [
        "--no-registry",
        "--store",
        str(tmp_path / "s.json"),
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
    ]


def test_start_prints_the_plan_then_status_stop_list(home, tmp_path, capsys):
    assert main([*home, "start", "ab1", "--arm", "v7=50", "--arm", "v8=50", "--control", "v7", *PLAN]) == 0
    out = capsys.readouterr().out
    # 28 days of cards, and the last ones count 7 + 7 days later (their window, their labels' maturity).
    assert "a 10% change is found with 80% power within 42 days" in out
    record = ExperimentStore(tmp_path / "s.json").get("ab1")
    assert (
        record["split"] == {"v7": 50, "v8": 50}
        and record["status"] == "running"
        and len(record["salt"]) == 16
    )
    assert record["plan"]["days_for_power"] == 42
    assert main([*home, "status", "ab1"]) == 0
    assert json.loads(capsys.readouterr().out)["salt"] == record["salt"]  # the salt never changes
    assert main([*home, "stop", "ab1", "--reason", "p99 too high"]) == 0
    assert main([*home, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ab1\tstopped\tfraud\tv7=50 v8=50"
    actions = [json.loads(line)["action"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert actions == ["experiment-start", "experiment-stop"]
    # Stopped, the traffic is free again.
    assert main([*home, "start", "ab2", "--arm", "v7=90", "--arm", "v9=10", "--control", "v7"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "x", "--arm", "v7=50", "--arm", "v8=40", "--control", "v7"], "sum to 100"),
        (["start", "x", "--arm", "v7=100", "--control", "v7"], "at least two arms"),
        (["start", "x", "--arm", "v7=50", "--arm", "v8=50", "--control", "v9"], "not among the arms"),
        (["start", "x", "--arm", "v7=50", "--arm", "v7=50", "--control", "v7"], "repeat"),
        (
            ["start", "ab1", "--arm", "v7=50", "--arm", "v8=50", "--control", "v7", "--traffic", "other"],
            "exists",
        ),
        (
            ["start", "x", "--arm", "v7=50", "--arm", "v9=50", "--control", "v7"],
            "already running over traffic",
        ),
        (["stop", "nope", "--reason", "r"], "no experiment 'nope'"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(home, tmp_path, capsys, argv, message):
    assert main([*home, "start", "ab1", "--arm", "v7=50", "--arm", "v8=50", "--control", "v7"]) == 0
    before = (tmp_path / "s.json").read_bytes(), (tmp_path / "audit.jsonl").read_bytes()
    capsys.readouterr()
    assert main([*home, *argv]) == 2
    assert message in capsys.readouterr().err
    assert ((tmp_path / "s.json").read_bytes(), (tmp_path / "audit.jsonl").read_bytes()) == before


def test_help_of_every_command(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "relearn.experiments", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: python -m relearn.experiments") and "start ab1" in out
    for command in ("start", "status", "stop", "list", "simulate"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m relearn.experiments {command}")


def test_simulate_prints_the_figures(capsys):
    assert main(["simulate", "--experiments", "200", "--seed", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)
    fpr = figures["aa_false_positive_rate"]
    assert fpr["msprt_daily_looks"] <= 0.05 + 0.05 < fpr["t_test_daily_looks"]
    assert figures["power_minus_10pct"]["days"] == 28 and figures["power_minus_10pct"]["found"] >= 0.75
    regret = figures["bandit_regret_frauds"]
    assert regret["oracle"] == 0 < regret["thompson"] <= regret["equal_split"] / 2


@pytest.mark.parametrize("grace", ["120", "0"])
def test_analyze_leaves_out_the_rows_scored_while_replicas_refresh(
    home, tmp_path, monkeypatch, capsys, grace
):
    """A replica routes by the new store only once the kubelet refreshed its ConfigMap: rows scored within
    RELEARN_EXPERIMENT_REFRESH_GRACE_SECONDS of the start (here: by the champion, for cards of any arm) are
    not credited to an arm."""
    from test_experiments_analysis import traffic

    monkeypatch.setenv("RELEARN_EXPERIMENT_REFRESH_GRACE_SECONDS", grace)
    monkeypatch.setenv("RELEARN_EXPERIMENT_MIN_UNITS", "100")
    assert main([*home, "start", "ab1", "--arm", "v7=50", "--arm", "v8=50", "--control", "v7", *PLAN]) == 0
    started = ExperimentStore(tmp_path / "s.json").get("ab1")["started"]
    settled = traffic({"v7": 0.5, "v8": 0.5}, seed=3, cards=2000, days=21)
    settled["time"] += started + 121.0
    early = settled.head(300).assign(arm="v7", time=started + 30.0, user_id=lambda f: "early-" + f["user_id"])
    pd.concat([early, settled]).to_parquet(tmp_path / "joined.parquet")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the report folder "r"
    argv = ["analyze", "ab1", "--predictions", str(tmp_path / "joined.parquet"), "--report-dir", "r"]
    assert main([*home, *argv]) == 0
    counted = json.loads(capsys.readouterr().out)["v8"]["arms"]["v7"]["transactions"]
    assert counted == int((settled["arm"] == "v7").sum()) + (300 if grace == "0" else 0)
