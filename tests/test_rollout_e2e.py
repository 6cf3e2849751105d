"""End to end in local mode: real predictors, the local router, a real Prometheus and the controller.

Everything is a real process on 127.0.0.1:

* three predictors (``python -m relearn.serving.predictor``) from tiny fabricated FraudNet artifacts:
  v1 (stable), v2 (a good challenger: v1's weights with a tiny output-bias shift) and v3 (a bad
  challenger). v3's network has embedding tables of one row (only the "unknown" slot) while its
  preprocessor carries the full vocabularies — an artifact whose network and preprocessor do not match.
  The predictor loads it (the feature names match the contract), but every request with a known
  category maps to an index past the table and the forward pass raises ``IndexError``: the server answers
  500 and counts ``relearn_serving_requests_total{outcome="error"}``, as a broken model in production would;
* a tmp MLflow registry (SQLite) with the three versions, ``champion`` → 1; the controller moves the alias
  and tags the rejected version;
* the local router in front (REST and gRPC; the test's load generator uses v2 REST);
* Prometheus (Debian's ``/usr/bin/prometheus``) scraping the predictors' ``/metrics`` every second;
* the controller's :func:`~relearn.rollout.controller.step` called in a loop, 5 s rate windows.

A load generator (two threads, ~40 requests/s in all) sends v2 REST requests through the router for the
whole test and counts outcomes by the router's ``x-relearn-route`` response header.

Good path: v2 as shadow (100 % mirrored; v1 and v2 payload-log to two event sinks) → the shadow gate of
:mod:`relearn.rollout.shadow` on the mirrored events joined by request id → canary 10 → 25 → 50 →
promoted by the controller alone (``champion`` → 2). Bad path: canary v3 at 10 % → rolled back by the
controller before 50 %, tagged ``rollout_rejected`` with the reason. Throughout: zero failed requests on
the stable route, and no failure the router could not attribute to a route.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relearn.events import RESPONSE_TYPE
from relearn.rollout.analysis import Action
from relearn.rollout.audit import AuditLog
from relearn.rollout.controller import (
    REJECTED_TAG,
    ControllerSettings,
    MlflowRegistry,
)
from relearn.rollout.shadow import ShadowSettings, evaluate
from rollout_stack import (
    PROMETHEUS,
    WINDOW,
    Load,
    Stack,
    analyse,
    make_artifacts,
    sink_events,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def registry(settings, tmp_path: Path) -> Iterator[tuple[MlflowRegistry, dict[str, Path]]]:
    """MLflow (SQLite under tmp) with versions 1..3 of the model, sources = the artifacts; champion → 1."""
    from mlflow import MlflowClient

    artifacts = make_artifacts(tmp_path / "artifacts")
    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(settings.model_name)
    for version in ("1", "2", "3"):
        mv = client.create_model_version(settings.model_name, source=str(artifacts[version]))
        assert mv.version == version or str(mv.version) == version
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    yield MlflowRegistry(settings), artifacts


def test_shadow_canary_promote_then_bad_canary_rolled_back(registry, tmp_path: Path) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus binary not installed")
    from relearn.model.registry import get_alias_version, get_version_tags

    reg, artifacts = registry
    cfg = ControllerSettings(
        backend="local",
        audit_log=tmp_path / "audit.jsonl",
        window=f"{WINDOW:g}s",
        interval_seconds=1.5,
        min_requests=10,  # ~4 requests/s reach a 10 % canary: ~20 per 5 s window
        max_p99_seconds=2.0,  # a busy 2-core machine; latency is not what this test is about
    )
    stack = Stack(tmp_path, artifacts)
    cfg = cfg.model_copy(update={"state": stack.state})
    load = None
    try:
        stack.wait_ready()
        load = Load(stack.url).start()
        wait_until(lambda: sum(load.snapshot()[0].values()) >= 20, 20, "first requests", stack.procs)

        # ---- shadow: v2 receives a mirror of every request; its answers never reach the client
        stack.backend.start_shadow("2", 100)
        shadow_cfg = ShadowSettings(min_pairs=100)

        def mirrored() -> list:
            return sink_events(stack.sinks["stable"], "stable") + sink_events(stack.sinks["shadow"], "shadow")

        wait_until(lambda: evaluate(mirrored(), shadow_cfg)[0].pairs >= 150, 40, "150 pairs", stack.procs)
        comparison, ready, reason = evaluate(mirrored(), shadow_cfg)
        assert ready, reason
        assert comparison.agreement >= 0.98 and comparison.mean_abs_diff < 0.01
        assert any(e[1] == RESPONSE_TYPE for e in mirrored())

        # ---- the controller alone: shadow gate → canary 10 → 25 → 50 → promoted
        good_started = time.monotonic()
        good = analyse(stack, reg, cfg, budget=75, shadow_events=mirrored, shadow_settings=shadow_cfg)
        promoted_after = good[-1][2] - good_started
        moves = [(d.action.value, d.percent) for d, _, _ in good if d.action is not Action.HOLD]
        assert moves == [("step", 10), ("step", 25), ("step", 50), ("promote", None)], good
        state = stack.backend.state()
        assert state.stable == "2" and state.canary is None and state.shadow is None
        assert get_alias_version(reg.settings, "champion") == "2"
        ok, failed, by_version = load.snapshot()
        assert ok["canary"] > 0 and by_version["2"] > 0

        # ---- bad canary (stable is v2 now): rolled back before 50 %, tagged with the reason
        time.sleep(2)
        before = load.snapshot()[2]["3"]
        started = time.monotonic()
        stack.backend.start_canary("3", 10)
        bad = analyse(stack, reg, cfg, budget=45)
        rollback_after = bad[-1][2] - started
        assert bad[-1][0].action is Action.ROLLBACK, bad
        assert all(d.percent < 50 for d, _, _ in bad if d.action is Action.STEP), "rolled back before 50 %"
        state = stack.backend.state()
        assert state.stable == "2" and state.canary is None and state.canary_percent == 0
        assert get_alias_version(reg.settings, "champion") == "2", "champion untouched by the bad canary"
        tag = get_version_tags(reg.settings, "3")[REJECTED_TAG]
        assert "error rate" in tag
        time.sleep(1.0)  # requests in flight at the rollback finish
    finally:
        if load is not None:
            load.close()
        stack.close()

    ok, failed, by_version = load.snapshot()
    print(
        f"\nload: ok {dict(ok)} failed {dict(failed)} by version {dict(by_version)}; "
        f"good canary promoted after {promoted_after:.1f} s; "
        f"bad canary rolled back after {rollback_after:.1f} s, {failed['canary']} failed canary requests "
        f"({by_version['3'] - before} v3 successes)"
    )
    assert failed["stable"] == 0, f"failed requests on the stable route: {load.errors}"
    assert failed["unattributed"] == 0, f"failures without a route: {load.errors}"
    assert failed["canary"] > 0, "the bad canary served (and failed) some requests"
    assert by_version["3"] == 0, "v3 answers every request with an error"
    assert ok["stable"] > 500
    audit = AuditLog(cfg.audit_log).entries()
    acted = [(e["action"], e["version"]) for e in audit if e["action"] != "analysis-hold"]
    assert acted == [
        ("shadow-to-canary", "2"),
        ("canary-step", "2"),
        ("canary-step", "2"),
        ("promote", "2"),
        ("rollback", "3"),
    ]
    assert audit[-1]["reason"] == tag and audit[-1]["snapshot"]["canary_error_rate"] > cfg.max_error_rate
