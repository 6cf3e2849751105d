"""``kubectl relearn``: the sub-commands against the local backend (state file) and the audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relearn.rollout.audit import AuditLog
from relearn.rollout.cli import run
from relearn.rollout.local_backend import LocalBackend


def _cli(tmp: Path, *argv: str) -> int:
    return run(
        ["--backend", "local", "--state", str(tmp / "s.json"), "--audit-log", str(tmp / "a.jsonl"), *argv]
    )


def test_full_cycle_and_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = LocalBackend(tmp_path / "s.json")
    for v in ("1", "2", "3"):
        backend.register(v, rest=f"http://127.0.0.1:1/{v}", grpc="127.0.0.1:1")
    assert (
        _cli(tmp_path, "shadow", "start", "2", "--percent", "20", "--reason", "challenger passed gate") == 0
    )
    assert _cli(tmp_path, "shadow", "stop") == 0
    assert _cli(tmp_path, "canary", "start", "2", "--percent", "10") == 0
    assert _cli(tmp_path, "canary", "set", "--percent", "25") == 0
    assert _cli(tmp_path, "promote", "--reason", "all gates green") == 0
    assert _cli(tmp_path, "canary", "start", "3", "--percent", "10") == 0
    assert _cli(tmp_path, "rollback", "--reason", "error rate") == 0
    assert _cli(tmp_path, "promote") == 1, "nothing to promote"
    capsys.readouterr()
    assert _cli(tmp_path, "-o", "json", "status") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == {
        "stable": "2",
        "canary": None,
        "canary_percent": 0,
        "shadow": None,
        "mirror_percent": 0.0,
    }
    entries = AuditLog(tmp_path / "a.jsonl").entries()
    assert [e["action"] for e in entries] == [
        "shadow-start", "shadow-stop", "canary-start", "canary-step", "promote", "canary-start", "rollback",
    ]  # fmt: skip
    assert entries[4]["version"] == "2" and entries[4]["reason"] == "all gates green"
    assert entries[6]["version"] == "3" and entries[6]["state"]["stable"] == "2"
    assert _cli(tmp_path, "history", "--limit", "2") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "rollback" in out[1] and "error rate" in out[1]


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relearn.rollout.cli", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for command in ("status", "canary", "shadow", "promote", "rollback", "history", "--backend"):
        assert command in out.stdout


def test_register_from_the_command_line_then_canary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The README's local rollout: versions registered by ``register``, not from Python, then a canary."""
    assert _cli(tmp_path, "canary", "start", "7", "--percent", "10") == 1
    assert "register 7 --rest URL --grpc HOST:PORT" in capsys.readouterr().err
    assert _cli(tmp_path, "register", "6", "--rest", "http://127.0.0.1:8092", "--grpc", "127.0.0.1:8093") == 0
    assert _cli(tmp_path, "register", "7", "--rest", "http://127.0.0.1:8094", "--grpc", "127.0.0.1:8095") == 0
    assert _cli(tmp_path, "canary", "start", "7", "--percent", "10") == 0
    state = json.loads((tmp_path / "s.json").read_text())
    assert (state["stable"], state["canary"], state["canary_percent"]) == ("6", "7", 10)
    assert state["endpoints"]["7"] == {"rest": "http://127.0.0.1:8094", "grpc": "127.0.0.1:8095"}
    assert [e["action"] for e in AuditLog(tmp_path / "a.jsonl").entries()] == [
        "register", "register", "canary-start",
    ]  # fmt: skip
    capsys.readouterr()
    assert _cli(tmp_path, "register", "8") == 1, "no endpoint given"
    assert "--rest URL and/or --grpc" in capsys.readouterr().err
    cluster = ["--backend", "kubernetes", "register", "8", "--rest", "http://x"]
    assert run(cluster) == 1 and "--backend local" in capsys.readouterr().err


def test_router_reads_the_state_file_the_cli_writes_by_default() -> None:
    """``python -m relearn.rollout.router`` needs no --state, and its ports clash with no other default."""
    out = subprocess.run(
        [sys.executable, "-m", "relearn.rollout.router", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "<RELEARN_HOME>/rollout/state.json" in out.stdout
    assert "default: 8084" in out.stdout and "default: 8085" in out.stdout


def test_shared_options_default_from_the_rollout_settings_and_bad_options_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The options before the command are RolloutTarget's (RELEARN_ROLLOUT_*); a bad one exits 2 naming it."""
    monkeypatch.setenv("RELEARN_ROLLOUT_BACKEND", "local")
    monkeypatch.setenv("RELEARN_ROLLOUT_STATE", str(tmp_path / "s.json"))
    monkeypatch.setenv("RELEARN_ROLLOUT_AUDIT_LOG", str(tmp_path / "a.jsonl"))
    assert run(["register", "4", "--rest", "http://127.0.0.1:1"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["stable"] == "4"
    assert AuditLog(tmp_path / "a.jsonl").entries()[-1]["backend"] == "local"
    capsys.readouterr()
    for argv, named in (
        (["canary", "start", "4", "--percent", "ten"], "percent"),
        (["--backend", "cloud", "status"], "backend"),
        (["canary", "start", "4"], "--percent"),
        (["experiment", "--no-registry", "start", "x", "--arm", "7=ten", "--control", "7"], "7=ten"),
        (["experiment", "update-bandit", "b1"], "--history FILE or --detector URL"),
    ):
        with pytest.raises(SystemExit) as done:
            run(argv)
        assert done.value.code == 2 and named in capsys.readouterr().err, argv
    assert run(["canary"]) == 2 and "give a command" in capsys.readouterr().err
    assert AuditLog(tmp_path / "a.jsonl").entries()[-1]["action"] == "register", "nothing else recorded"
