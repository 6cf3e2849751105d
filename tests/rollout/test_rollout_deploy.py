"""The pipeline's deploy step: package code against the local backend, and the KFP component compiles."""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from relearn.rollout.audit import AuditLog
from relearn.rollout.backend import RolloutError
from relearn.rollout.controller import ControllerSettings
from relearn.rollout.deploy import deploy, run_deploy
from relearn.rollout.local_backend import LocalBackend
from relearn.steps import StepFailed


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalBackend, AuditLog]:
    """A local backend with versions 1 (stable) and 2, selected through the environment like in a pod."""
    monkeypatch.setenv("RELEARN_ROLLOUT_BACKEND", "local")
    monkeypatch.setenv("RELEARN_ROLLOUT_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("RELEARN_ROLLOUT_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    backend = LocalBackend(tmp_path / "state.json")
    for v in ("1", "2", "3"):
        backend.register(v, rest=f"http://127.0.0.1:1/{v}")
    return backend, AuditLog(tmp_path / "audit.jsonl")


def test_canary_mode_starts_at_the_first_step(env) -> None:
    backend, audit = env
    result = deploy("2", gate_passed=True, rollout_mode="canary")
    assert result.action == "canary"
    assert backend.state().canary == "2" and backend.state().canary_percent == 10
    (entry,) = audit.entries()
    assert (
        entry["action"] == "canary-start" and entry["actor"] == "pipeline/deploy" and entry["version"] == "2"
    )
    again = deploy("3", gate_passed=True, rollout_mode="canary")
    assert again.action == "skipped" and "canary 2 is still being analysed" in again.reason
    assert backend.state().canary == "2"


def test_shadow_mode_mirrors(env) -> None:
    backend, audit = env
    assert deploy("2", gate_passed=True, rollout_mode="shadow", percent=30).action == "shadow"
    state = backend.state()
    assert state.shadow == "2" and state.mirror_percent == 30 and state.canary is None
    assert "replaces shadow 2" in deploy("3", gate_passed=True, rollout_mode="shadow").reason
    assert backend.state().shadow == "3" and backend.state().mirror_percent == 100
    assert [e["action"] for e in audit.entries()] == ["shadow-start", "shadow-start"]


def test_nothing_deployed_without_gate_or_for_the_stable_version(env) -> None:
    backend, audit = env
    assert deploy("2", gate_passed=False, rollout_mode="canary").action == "skipped"
    assert deploy("2", gate_passed=True, rollout_mode="none").action == "skipped"
    assert "already serves" in deploy("1", gate_passed=True, rollout_mode="canary").reason
    assert backend.state().canary is None and audit.entries() == []
    with pytest.raises(ValueError):
        deploy("2", gate_passed=True, rollout_mode="blue-green")  # type: ignore[arg-type]


def test_step_wrapper_writes_markdown_and_fails_readably(env, tmp_path: Path) -> None:
    out = tmp_path / "decision.md"
    assert run_deploy("2", True, "canary", 0.0, out) == (
        "canary",
        out.read_text().split("reason: ")[1].strip(),
    )
    assert out.read_text().startswith("# Deploy: canary")
    with pytest.raises(StepFailed, match="no registered endpoints"):
        run_deploy("9", True, "shadow", 10.0, out)


def test_explicit_backend_errors_propagate(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s.json")
    backend.register("1", rest="http://127.0.0.1:1/1")
    cfg = ControllerSettings(backend="local", state=tmp_path / "s.json", audit_log=tmp_path / "a.jsonl")
    with pytest.raises(RolloutError):
        deploy("5", gate_passed=True, rollout_mode="canary", settings=cfg, backend=backend)


def test_component_compiles_and_its_function_runs(env, tmp_path: Path) -> None:
    from kfp import compiler, dsl

    from components.deploy.component import deploy as deploy_component

    @dsl.pipeline(name="deploy-only")
    def pipe(model_version: str = "2", rollout_mode: str = "canary") -> str:
        return deploy_component(
            model_version=model_version, gate_passed=True, rollout_mode=rollout_mode, percent=0.0
        ).outputs["reason"]

    path = tmp_path / "deploy.yaml"
    compiler.Compiler().compile(pipe, str(path))
    doc = yaml.safe_load(path.read_text())
    inputs = doc["components"]["comp-deploy"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"model_version", "gate_passed", "rollout_mode", "percent"}
    assert inputs["gate_passed"]["parameterType"] == "BOOLEAN"
    # The lightweight component's body, run in-process as the KFP executor would.
    outputs = deploy_component.python_func(
        model_version="2",
        gate_passed=True,
        rollout_mode="shadow",
        percent=20.0,
        decision=SimpleNamespace(path=str(tmp_path / "d.md")),
    )
    assert outputs.action == "shadow" and (tmp_path / "d.md").exists()
    assert LocalBackend(tmp_path / "state.json").state().mirror_percent == 20
