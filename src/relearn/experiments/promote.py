"""Promote an experiment's winner through the existing rollout path, never a second one.

``kubectl relearn experiment promote NAME`` takes the winner recorded by ``analyze`` (a treatment whose
always-valid test beat the control), points the registry's ``challenger`` alias at its version and starts
it as a canary with :func:`relearn.rollout.deploy.deploy`, as the pipeline's deploy step does after a
passed gate: same backend (KServe ``canaryTrafficPercent`` in the cluster, the local router's state
locally), same first share of the canary schedule, same rollout audit trail. The rollout controller's
canary analysis takes over from there. Refused, with nothing changed: a running experiment, no winner,
the control as the winner (it already serves), a canary already running.
"""

from __future__ import annotations

from typing import Any

from relearn.experiments.routing import model_version
from relearn.experiments.store import Record


def winner_of(record: Record) -> str:
    """The treatment to promote: the winner of the comparisons, the largest cut if several won.

    Raises:
        ValueError: the experiment runs, has no winner, or its control won.
    """
    name = record["name"]
    if record["status"] == "running":
        raise ValueError(f"experiment {name!r} is still running: analyze it until decided, or stop it")
    results = record.get("result") or {}
    won = {r["winner"]: r for r in results.values() if r.get("decision") == "winner" and r.get("winner")}
    if not won:
        decisions = sorted({str(r.get("decision")) for r in results.values()}) or ["no result"]
        raise ValueError(f"experiment {name!r} has no winner ({', '.join(decisions)}): nothing to promote")
    treatments = {arm: r for arm, r in won.items() if arm != record["control"]}
    if not treatments:
        raise ValueError(f"the control {record['control']!r} won experiment {name!r}: it already serves")
    # Each comparison's effect is treatment minus control (loss per card): the most negative cut most.
    return min(treatments, key=lambda arm: treatments[arm]["effect"])


def promote(
    record: Record, *, settings: Any = None, percent: int | None = None, registry: bool = True
) -> Any:
    """Start the winner as the canary (the rollout path); returns the :class:`DeployResult`.

    Args:
        record: The stopped experiment with its result (the store's record).
        settings: The rollout's :class:`relearn.rollout.controller.ControllerSettings` (backend, namespace,
            InferenceService, canary schedule, audit trail); default from RELEARN_ROLLOUT_*.
        percent: The canary's first share (default: the schedule's first step).
        registry: Also point the ``challenger`` alias at the winner (off: offline tests and planning).

    Raises:
        ValueError: no winner to promote, or the rollout skipped it (a canary runs, it already serves).
        relearn.rollout.backend.RolloutError: the backend refused.
    """
    from relearn.rollout.deploy import deploy

    version = model_version(winner_of(record))
    result = deploy(version, gate_passed=True, rollout_mode="canary", percent=percent, settings=settings)
    if result.action != "canary":
        raise ValueError(f"not promoted: {result.reason}")
    if registry:
        from relearn.model.registry import set_alias
        from relearn.settings import RelearnSettings

        set_alias(RelearnSettings(), "challenger", version)
    return result
