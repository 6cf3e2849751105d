"""``kubectl relearn experiment``: the experiments CLI in the plugin, checked and tagged in a real registry.

The registry is a tmp MLflow (SQLite under the ``settings`` fixture's RELEARN_HOME) holding versions 1 and 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experiments_analysis import planned_tau, traffic

from relearn.experiments.assignment import Split
from relearn.experiments.cli import main as experiments_main
from relearn.experiments.result import Decision, Result
from relearn.experiments.store import ExperimentStore
from relearn.experiments.versions import arm_tags, model_version
from relearn.rollout.cli import run

PLAN = ["--cards-per-day", "100000", "--base-loss", "0.75", "--loss-sd", "16"]


@pytest.fixture
def registry(settings, tmp_path: Path):
    """Versions 1 and 2 of the model in a tmp MLflow registry; returns its client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    client.create_registered_model(settings.model_name)
    (tmp_path / "model").mkdir()
    for _ in range(2):
        client.create_model_version(settings.model_name, source=str(tmp_path / "model"))
    return client


def kubectl(*argv: str) -> int:
    return run(["experiment", *argv])


def tags(client, settings, version: str) -> dict[str, str]:
    return dict(client.get_model_version(settings.model_name, version).tags)


def test_start_status_list_stop_through_the_plugin_on_the_same_store(settings, registry, capsys):
    assert kubectl("start", "ab1", "--arm", "1=50", "--arm", "v2=50", "--control", "1", *PLAN) == 0
    assert "within 42 days" in capsys.readouterr().out  # the plan, as python -m prints it
    store = ExperimentStore(settings.home / "experiments" / "experiments.json")
    assert store.get("ab1")["split"] == {"1": 50, "v2": 50}
    # The same store from python -m relearn.experiments (no --store: both default to RELEARN_HOME).
    assert experiments_main(["status", "ab1"]) == 0
    assert json.loads(capsys.readouterr().out)["salt"] == store.get("ab1")["salt"]
    assert kubectl("list") == 0
    assert capsys.readouterr().out == "ab1\trunning\tfraud\t1=50 v2=50\n"
    assert kubectl("stop", "ab1", "--reason", "p99 too high") == 0
    assert store.get("ab1")["status"] == "stopped"
    for version, role in (("1", "control"), ("2", "treatment")):  # v2 is version 2
        assert tags(registry, settings, version) == {
            "relearn.experiment.ab1.decision": "stopped",
            "relearn.experiment.ab1.reason": "p99 too high",
            "relearn.experiment.ab1.role": role,
        }
    audit = (settings.home / "experiments" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in audit] == ["experiment-start", "experiment-stop"]
    assert kubectl("stop", "ab1", "--reason", "again") == 2, "not running"


def test_unknown_version_is_refused_by_name_and_nothing_changes(settings, registry, capsys):
    assert kubectl("start", "ab1", "--arm", "1=50", "--arm", "3=40", "--arm", "v9=10", "--control", "1") == 2
    err = capsys.readouterr().err
    assert "unknown model version(s) ['3', 'v9'] of 'relearn-fraud'" in err
    assert not (settings.home / "experiments").exists()


def test_analyze_tags_each_arms_version_with_the_result(settings, registry, tmp_path, monkeypatch, capsys):
    for key, value in {"UNIT_WINDOW_DAYS": "3", "LABEL_MATURITY_DAYS": "2", "MIN_UNITS": "500"}.items():
        monkeypatch.setenv(f"RELEARN_EXPERIMENT_{key}", value)
    tau = planned_tau(99)
    plan = ["--cards-per-day", "1000", "--base-loss", str(tau * 10), "--loss-sd", "40"]
    assert kubectl("start", "ab1", "--arm", "v1=50", "--arm", "v2=50", "--control", "v1", *plan) == 0
    split = Split.of({"v1": 50, "v2": 50})
    traffic({"v1": 0.5, "v2": 0.3}, seed=1, split=split).to_parquet(tmp_path / "joined.parquet")
    argv = ["analyze", "ab1", "--predictions", str(tmp_path / "joined.parquet"), "--report-dir", "r"]
    monkeypatch.chdir(tmp_path)
    assert kubectl(*argv) == 0
    capsys.readouterr()
    control, treatment = tags(registry, settings, "1"), tags(registry, settings, "2")
    assert treatment["relearn.experiment.ab1.decision"] == "winner"
    assert treatment["relearn.experiment.ab1.winner"] == "v2"
    assert treatment["relearn.experiment.ab1.role"] == "treatment"
    assert float(treatment["relearn.experiment.ab1.effect"]) < 0  # v2 loses less
    assert control == {**treatment, "relearn.experiment.ab1.role": "control"}
    assert (
        ExperimentStore(settings.home / "experiments" / "experiments.json").get("ab1")["status"] == "stopped"
    )


def test_the_control_keeps_every_comparison_of_a_three_arm_experiment():
    def result(treatment: str, decision: Decision) -> Result:
        return Result("ab", "7", treatment, decision, None, 0.1, 0.01, -1.0, 1.0, 0.5, {}, 3.0, "")

    tags = arm_tags({"8": result("8", Decision.NO_DIFFERENCE), "9": result("9", Decision.RUNNING)})
    assert tags["8"]["relearn.experiment.ab.decision"] == "no difference"
    assert tags["9"]["relearn.experiment.ab.decision"] == "running"
    assert tags["7"]["relearn.experiment.ab.8.decision"] == "no difference"
    assert tags["7"]["relearn.experiment.ab.9.decision"] == "running"
    assert tags["7"]["relearn.experiment.ab.role"] == "control"
    assert [model_version(a) for a in ("7", "v7", "vx", "champion")] == ["7", "7", "vx", "champion"]


def test_help_lists_the_experiment_commands(capsys):
    with pytest.raises(SystemExit) as done:
        run(["experiment", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "start",
        "status",
        "stop",
        "list",
        "analyze",
        "promote",
        "--configmap",
        "--router",
        "--no-registry",
    ):
        assert command in out


def test_promote_starts_the_winner_as_the_canary_through_the_rollout_path(
    settings, registry, tmp_path, capsys
):
    from relearn.rollout.audit import AuditLog
    from relearn.rollout.controller import ControllerSettings
    from relearn.rollout.local_backend import LocalBackend

    state = tmp_path / "router-state.json"
    backend = LocalBackend(state)
    for version in ("1", "2"):  # the first registered version serves as stable
        backend.register(version, rest=f"http://127.0.0.1:{version}")
    store = ExperimentStore(settings.home / "experiments" / "experiments.json")
    store.start("ab", {"1": 50, "2": 50}, control="1")
    local = ["--backend", "local", "--state", str(state), "experiment"]
    assert run([*local, "promote", "ab"]) == 2, "running: nothing to promote yet"
    won = Result("ab", "1", "2", Decision.WINNER, "2", -0.1, -0.12, -0.2, -0.01, 0.001, {}, 20.0, "")
    store.stop("ab", "decided", result={"2": won.as_dict()})
    assert run([*local, "promote", "ab"]) == 0
    now = backend.state()
    assert (now.stable, now.canary, now.canary_percent) == ("1", "2", min(ControllerSettings().steps))
    assert str(registry.get_model_version_by_alias(settings.model_name, "challenger").version) == "2"
    rollout = AuditLog(settings.home / "rollout" / "audit.jsonl").entries(5)
    assert [(e["action"], e["version"]) for e in rollout] == [("canary-start", "2")]  # deploy's own entry
    trail = AuditLog(store.path.parent / "audit.jsonl").entries(5)
    assert trail[-1]["action"] == "experiment-promote" and trail[-1]["version"] == "2"
    capsys.readouterr()
    assert run([*local, "promote", "ab"]) == 2, "a canary is running"
    assert "not promoted: canary 2 is still being analysed" in capsys.readouterr().err
    # A new experiment over the traffic is refused while the canary runs (the local router's state says
    # so), nothing written.
    before = store.path.read_bytes()
    argv = ["start", "ab2", "--arm", "1=50", "--arm", "2=50", "--control", "1", *PLAN]
    assert run([*local, *argv]) == 2
    assert "refused: canary 2 is running at 10% of the traffic" in capsys.readouterr().err
    assert store.path.read_bytes() == before


def test_the_plugins_own_help_names_the_experiment_commands(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse would break update-bandit at its hyphen
    with pytest.raises(SystemExit) as done:
        run(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "experiment" in out and "update-bandit|promote" in out
