"""The pipeline's deploy step: a challenger that passed the gate starts as shadow or canary.

The backend comes from the same settings as the controller (``RELEARN_ROLLOUT_BACKEND``, namespace,
InferenceService, VirtualService, local state file), so in a cluster the step patches the InferenceService /
VirtualService exactly as ``kubectl relearn canary start`` / ``shadow start`` do, and locally it edits the
local router's state. From there the controller takes over (canary analysis), or an operator promotes the
shadow to canary once :func:`relearn.rollout.shadow.shadow_ready` passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relearn.rollout.audit import AuditLog, audit_log_for
from relearn.rollout.backend import RolloutBackend, RolloutError
from relearn.rollout.backends import make_backend
from relearn.rollout.controller import ControllerSettings

ACTOR = "pipeline/deploy"
MODES = ("shadow", "canary", "none")


@dataclass(frozen=True)
class DeployResult:
    """What the step did: ``shadow``, ``canary`` or ``skipped``, and why."""

    action: str
    reason: str
    version: str

    def markdown(self) -> str:
        """The KFP Markdown output."""
        return f"# Deploy: {self.action}\n\n- version: {self.version}\n- reason: {self.reason}\n"


def deploy(
    model_version: str,
    *,
    gate_passed: bool,
    rollout_mode: Literal["shadow", "canary", "none"] = "canary",
    percent: float | None = None,
    settings: ControllerSettings | None = None,
    backend: RolloutBackend | None = None,
    audit: AuditLog | None = None,
) -> DeployResult:
    """Start the challenger as shadow or canary when the gate passed.

    Args:
        model_version: The registered version the pipeline produced.
        gate_passed: The gate step's verdict; a failed gate deploys nothing.
        rollout_mode: ``canary`` (first weight of the schedule unless ``percent``), ``shadow`` (mirror
            ``percent``, default 100 %) or ``none``.
        percent: Canary share or mirrored share; None for the defaults above.
        settings: Backend choice and the canary schedule (default: RELEARN_ROLLOUT_* environment).
        backend: An explicit backend (tests); default the one chosen by ``settings``.
        audit: The audit trail (default: ``settings.audit_log``).

    Returns:
        The action taken. A running canary, a canary or shadow while an experiment runs over the traffic
        (:mod:`relearn.experiments.exclusion`) or a version that already serves as stable is skipped.

    Raises:
        ValueError: An unknown ``rollout_mode``.
        RolloutError: The backend refused (e.g. the local router does not know the version).
    """
    if rollout_mode not in MODES:
        raise ValueError(f"rollout_mode must be one of {MODES}, not {rollout_mode!r}")
    version = str(model_version)
    if not gate_passed:
        return DeployResult("skipped", "the challenger did not pass the gate", version)
    if rollout_mode == "none":
        return DeployResult("skipped", "rollout_mode is none", version)
    settings = settings or ControllerSettings()
    backend = backend or make_backend(settings)
    audit = audit or audit_log_for(settings.audit_log)
    from relearn.experiments.exclusion import running_experiment

    busy = running_experiment(backend)  # one test in production at a time: read before anything changes
    if busy:
        return DeployResult("skipped", busy, version)
    state = backend.state()
    if state.stable == version:
        return DeployResult("skipped", f"version {version} already serves the stable traffic", version)
    if rollout_mode == "canary":
        if state.canary is not None:
            reason = f"canary {state.canary} is still being analysed; not starting {version}"
            return DeployResult("skipped", reason, version)
        share = int(percent) if percent is not None else min(settings.steps)
        state = backend.start_canary(version, share)
        reason = f"gate passed: canary at {share}%, the controller analyses it from here"
    else:
        share = float(percent) if percent is not None else 100.0
        replaced = f" (replaces shadow {state.shadow})" if state.shadow and state.shadow != version else ""
        state = backend.start_shadow(version, share)
        reason = f"gate passed: shadow mirroring {share:g}%{replaced}"
    audit.append(
        f"{rollout_mode}-start",
        actor=ACTOR,
        reason=reason,
        version=version,
        percent=share,
        state=state.to_dict(),
    )
    return DeployResult(rollout_mode, reason, version)


def run_deploy(
    model_version: str, gate_passed: bool, rollout_mode: str, percent: float, decision_path: str | Path
) -> tuple[str, str]:
    """The KFP step: ``percent <= 0`` means the default share; writes the Markdown decision.

    Raises:
        relearn.errors.StepFailed: The backend refused the rollout.
    """
    from relearn.errors import StepFailed

    try:
        result = deploy(
            model_version,
            gate_passed=gate_passed,
            rollout_mode=rollout_mode,  # type: ignore[arg-type]
            percent=percent if percent > 0 else None,
        )
    except (RolloutError, ValueError) as exc:
        raise StepFailed(f"deploy of version {model_version} failed: {exc}") from exc
    Path(decision_path).write_text(result.markdown())
    return result.action, result.reason
