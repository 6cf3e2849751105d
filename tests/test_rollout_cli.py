"""``kubectl relearn``: the sub-commands against the local backend (state file) and the audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relearn.rollout.audit import AuditLog
from relearn.rollout.cli import build_parser, run
from relearn.rollout.router import LocalBackend


def _cli(tmp: Path, *argv: str) -> int:
    args = build_parser().parse_args(
        ["--backend", "local", "--state", str(tmp / "s.json"), "--audit-log", str(tmp / "a.jsonl"), *argv]
    )
    return run(args)


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
