"""The rollout controller: automated canary analysis against Prometheus, acting through a rollout backend.

Every ``interval_seconds`` the controller reads one :class:`~relearn.rollout.analysis.Snapshot` of the
canary and the stable version from Prometheus (:mod:`relearn.rollout.prometheus`: one PromQL per gate,
live traffic only), calls :func:`~relearn.rollout.analysis.decide` and acts:

* ``step``: ``backend.set_canary_percent`` to the next weight of the schedule (10 → 25 → 50 → 100);
* ``promote``: ``backend.promote`` and the MLflow ``champion`` alias moved to the canary version;
* ``rollback``: ``backend.rollback`` and the version tagged ``rollout_rejected=<reason>``;
* ``hold``: nothing (too little canary traffic in the window, Prometheus could not answer, or the step
  waits for evidence of quality: the canary's labelled predictions, or the backtest of
  :mod:`relearn.rollout.backtest` on the detector's inference log: ``detector_url`` or ``inference_log``).

Before each analysis, a stable revision that loads an alias (``models:/<name>@champion``, resolved at each
pod start) is pinned to the alias's current version (:func:`pin_stable`), so pods it starts later serve the
same model.

With a shadow and no canary, the shadow gate of :mod:`relearn.rollout.shadow` decides whether the shadow
becomes a canary: on the drift detector's comparison (``detector_url``, ``GET /v1/shadow``) in a cluster,
or on its inference log (``shadow_log``) when the controller can read the file.

Every decision taken while a canary runs is appended, with its reason, the snapshot and the evidence
(source, labelled predictions, effect and its bounds), to the audit log.
One iteration is :func:`step`, so tests drive it directly::

    python -m relearn.rollout.controller --backend local --state .relearn/rollout/state.json
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import Field

from relearn import commands
from relearn.commands import Command, command_config
from relearn.rollout.analysis import Action, AnalysisSettings, Decision, decide
from relearn.rollout.audit import AuditLog, audit_log_for
from relearn.rollout.backend import RolloutBackend, RolloutError, RolloutState
from relearn.rollout.backends import RolloutTarget, make_backend
from relearn.rollout.backtest import Backtest, DetectorRows
from relearn.rollout.prometheus import Prometheus, PrometheusError, read_snapshot
from relearn.rollout.shadow import (
    Comparison,
    ShadowSettings,
    comparison_of,
    detector_comparison,
    events_from_log,
    shadow_ready,
)

log = logging.getLogger("relearn.rollout.controller")  # not __main__ under python -m

ACTOR = "relearn-rollout-controller"
REJECTED_TAG = "rollout_rejected"
CHAMPION = "champion"


class ControllerSettings(RolloutTarget, AnalysisSettings):
    """Where the controller acts and reads, plus the analysis gates (environment: RELEARN_ROLLOUT_*)."""

    prometheus_url: str = Field("http://prometheus-operated:9090", description="Prometheus base URL.")
    prometheus_timeout_seconds: float = Field(5.0, description="Timeout of one Prometheus query.")
    interval_seconds: float = Field(60.0, description="Time between two analysis iterations.")
    window: str = Field("5m", description="PromQL range of the rate windows (one analysis window).")
    component: str = Field("predictor", description="`component` label of the serving metrics.")
    drift_p_value: float = Field(0.05, description="A feature whose drift p-value is below this drifted.")
    shadow_log: Path | None = Field(
        None,
        description="The drift detector's inference log (SQLite): shadow and stable predictions of the same "
        "requests; with it, a shadow that passes the shadow gate becomes a canary by itself.",
    )
    detector_url: str | None = Field(
        None,
        description="The drift detector's base URL: the shadow gate reads its comparison (GET /v1/shadow) "
        "and the backtest its rows (GET /v1/backtest/...) instead of the log file, which in a cluster is on "
        "the detector's own volume. Wins over shadow_log and inference_log.",
    )
    detector_timeout_seconds: float = Field(10.0, description="Timeout of one shadow comparison request.")
    inference_log: Path | None = Field(
        None,
        description="The drift detector's inference log (SQLite) the backtest evidence is read from (served "
        "model inputs, labels); default shadow_log. Without either, no backtest: the canary's own labels.",
    )


# ----------------------------------------------------------------------------------------------- registry
class Registry(Protocol):
    """What the controller does to the model registry."""

    def promote(self, version: str) -> None:
        """Move the ``champion`` alias to ``version``."""
        ...

    def reject(self, version: str, reason: str) -> None:
        """Tag ``version`` as rejected by the rollout, with the reason."""
        ...

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None while it does not exist (no model registered yet)."""
        ...


class MlflowRegistry:
    """The MLflow registry (aliases, tags) configured by :class:`relearn.settings.RelearnSettings`.

    Args:
        settings: Where MLflow lives and the registered model name (default: from the environment).
    """

    def __init__(self, settings: Any = None) -> None:
        from relearn.settings import RelearnSettings

        self.settings = settings or RelearnSettings()

    def promote(self, version: str) -> None:
        """``champion`` → ``version`` (through :func:`relearn.model.registry.set_alias`)."""
        from relearn.model.registry import set_alias

        set_alias(self.settings, CHAMPION, version)

    def reject(self, version: str, reason: str) -> None:
        """Tag ``rollout_rejected=<reason>`` (MLflow caps tag values; the reason is cut to 5000 chars)."""
        from mlflow import MlflowClient

        uri = self.settings.tracking_uri()
        MlflowClient(tracking_uri=uri, registry_uri=uri).set_model_version_tag(
            self.settings.model_name, str(version), REJECTED_TAG, reason[:5000]
        )

    def alias_version(self, alias: str) -> str | None:
        """Through :func:`relearn.model.registry.get_alias_version` (None: no such alias or model)."""
        from relearn.model.registry import get_alias_version

        return get_alias_version(self.settings, alias)


# ------------------------------------------------------------------------------------------- shadow gate
ShadowSource = Callable[[str | None, ShadowSettings], Comparison]
"""(shadow version, gate settings) → that shadow's comparison with stable."""


def events_source(events: Callable[[], list[Any]]) -> ShadowSource:
    """A comparison computed here from logged events (``events()`` is called at each iteration)."""
    return lambda version, s: comparison_of(events(), s.threshold, shadow_version=version)


def shadow_source(settings: ControllerSettings) -> ShadowSource | None:
    """The comparison the settings name: the detector's endpoint, else its log file, else none."""
    if settings.detector_url:
        url, timeout = settings.detector_url, settings.detector_timeout_seconds
        return lambda version, s: detector_comparison(url, version, s, timeout)
    if settings.shadow_log is not None:
        path = settings.shadow_log
        return events_source(lambda: events_from_log(path))
    return None


def backtest_for(settings: ControllerSettings, mlflow_settings: Any = None) -> Backtest | None:
    """The backtest the settings allow: the detector's endpoints, else the inference (or shadow) log file."""
    if "backtest" not in settings.evidence_sources:
        return None
    if settings.detector_url:
        rows = DetectorRows(settings.detector_url, settings.detector_timeout_seconds)
        return Backtest(rows, settings, mlflow_settings)
    path = settings.inference_log or settings.shadow_log
    return None if path is None else Backtest(path, settings, mlflow_settings)


# ------------------------------------------------------------------------------------------------- loop
def pin_stable(backend: RolloutBackend, registry: Registry, audit: AuditLog) -> str | None:
    """Pin the stable revision to the version its alias names now, if it loads an alias.

    A revision whose model URI is ``models:/<name>@champion`` resolves the alias at each pod start: once the
    alias moves, restarted or scaled-out pods of that revision would serve another model. Without a canary,
    the backend rewrites the URI to ``models:/<name>/<version>`` (a new revision serving the same version).
    An alias that does not exist yet (fresh install, no model) is left alone until a later iteration.

    Returns:
        The pinned version, or None when nothing was pinned.
    """
    alias = backend.stable_alias()
    if alias is None:
        return None
    version = registry.alias_version(alias)
    if version is None:
        log.warning("stable revision loads @%s, which does not exist yet: not pinned, retrying", alias)
        return None
    state = backend.pin_stable(version)
    reason = f"@{alias} resolved to version {version}: the stable revision loads it at every pod start"
    audit.append(
        "pin-stable", actor=ACTOR, reason=reason, version=version, alias=alias, state=state.to_dict()
    )
    log.info("decision", extra={"action": "pin-stable", "version": version, "reason": reason})
    return version


def step(
    backend: RolloutBackend,
    prometheus: Prometheus,
    registry: Registry,
    settings: ControllerSettings,
    audit: AuditLog | None = None,
    shadow_events: Callable[[], list[Any]] | None = None,
    shadow_settings: ShadowSettings | None = None,
    shadow_comparison: ShadowSource | None = None,
    backtest: Backtest | None = None,
) -> Decision:
    """One analysis iteration: snapshot, decision, action, audit entry.

    With no canary but a shadow, and ``shadow_comparison`` (see :func:`shadow_source`) or ``shadow_events``
    to compare it with stable, the shadow gate decides whether the shadow becomes a canary at the first step.
    A step the promotion policy names waits for evidence: the canary's labels, else ``backtest`` (see
    :func:`backtest_for`); the audit entry records the evidence looked at and the one acted on.

    Returns:
        The decision; ``hold`` with an empty reason list when nothing is to be analysed (nothing is audited
        then), ``hold`` with the Prometheus error as reason when the snapshot could not be read.
    """
    state = backend.state()
    if state.canary is None:
        if shadow_comparison is None and shadow_events is not None:
            shadow_comparison = events_source(shadow_events)
        if state.shadow is not None and shadow_comparison is not None:
            return _shadow_step(backend, state, shadow_comparison, settings, shadow_settings, audit)
        return Decision(Action.HOLD, None)
    canary, stable = state.canary, state.stable or ""
    audit = audit or audit_log_for(settings.audit_log)
    try:
        snapshot = read_snapshot(prometheus, settings, stable, canary)
    except PrometheusError as exc:
        decision = Decision(Action.HOLD, state.canary_percent, [f"no metrics: {exc}"])
        audit.append(
            "analysis-hold", actor=ACTOR, reason=decision.reason, version=canary, state=state.to_dict()
        )
        return decision
    waited = time.time() - (audit.canary_started(canary) or time.time())
    evidence = (lambda: backtest(stable, canary)) if backtest is not None else None
    decision = decide(state.canary_percent, snapshot, settings, evidence, waited_seconds=waited)
    try:
        if decision.action is Action.STEP:
            assert decision.percent is not None
            state = backend.set_canary_percent(decision.percent)
        elif decision.action is Action.PROMOTE:
            state = backend.promote()
            registry.promote(canary)
        elif decision.action is Action.ROLLBACK:
            state = backend.rollback()
            registry.reject(canary, decision.reason)
    except RolloutError as exc:  # someone acted in between (e.g. a manual rollback): record, go on
        audit.append("analysis-conflict", actor=ACTOR, reason=str(exc), version=canary)
        return Decision(Action.HOLD, state.canary_percent, [str(exc)])
    action = {
        Action.HOLD: "analysis-hold",
        Action.STEP: "canary-step",
        Action.PROMOTE: "promote",
        Action.ROLLBACK: "rollback",
    }[decision.action]
    reason = decision.reason
    audit.append(
        action,
        actor=ACTOR,
        reason=reason,
        version=canary,
        stable=stable,
        percent=decision.percent,
        snapshot=asdict(snapshot),
        state=state.to_dict(),
        evidence=decision.evidence.to_dict() if decision.evidence else None,
        checked=[e.to_dict() for e in decision.checked],
    )
    log.info("decision", extra={"action": action, "version": canary, "reason": reason})
    return decision


def _shadow_step(
    backend: RolloutBackend,
    state: RolloutState,
    source: ShadowSource,
    settings: ControllerSettings,
    shadow_settings: ShadowSettings | None,
    audit: AuditLog | None,
) -> Decision:
    """A shadow that agrees with stable on the same requests becomes a canary at the first step."""
    s = shadow_settings or ShadowSettings()
    try:
        comparison = source(state.shadow, s)
    except httpx.HTTPError as exc:  # the detector is down or restarting: hold, ask again next time
        return Decision(Action.HOLD, None, [f"shadow {state.shadow}: no comparison: {exc}"])
    ready, reason = shadow_ready(comparison, s)
    if not ready:
        return Decision(Action.HOLD, None, [f"shadow {state.shadow}: {reason}"])
    version, first = state.shadow, min(settings.steps)
    backend.stop_shadow()
    state = backend.start_canary(version, first)
    (audit or audit_log_for(settings.audit_log)).append(
        "shadow-to-canary", actor=ACTOR, reason=reason, version=version, percent=first, state=state.to_dict()
    )
    log.info("decision", extra={"action": "shadow-to-canary", "version": version, "reason": reason})
    return Decision(Action.STEP, first, [reason])


def run(
    settings: ControllerSettings,
    *,
    backend: RolloutBackend | None = None,
    prometheus: Prometheus | None = None,
    registry: Registry | None = None,
    max_iterations: int | None = None,
    stop: threading.Event | None = None,
) -> list[Decision]:
    """Iterate every ``interval_seconds`` until ``stop`` is set or ``max_iterations`` were done."""
    backend = backend or make_backend(settings)
    prometheus = prometheus or Prometheus(settings.prometheus_url, settings.prometheus_timeout_seconds)
    registry = registry or MlflowRegistry()
    audit = audit_log_for(settings.audit_log)
    comparison = shadow_source(settings)
    backtest = backtest_for(settings, getattr(registry, "settings", None))
    stop = stop or threading.Event()
    decisions: list[Decision] = []
    while not stop.is_set() and (max_iterations is None or len(decisions) < max_iterations):
        started = time.monotonic()
        try:
            pin_stable(backend, registry, audit)
        except Exception:  # MLflow or the API server down, a canary started meanwhile: next iteration
            log.exception("pinning the stable revision failed")
        try:
            decisions.append(
                step(
                    backend,
                    prometheus,
                    registry,
                    settings,
                    audit,
                    shadow_comparison=comparison,
                    backtest=backtest,
                )
            )
        except Exception:  # a failed iteration (API server down, ...) must not kill the controller
            log.exception("analysis iteration failed")
            decisions.append(Decision(Action.HOLD, None, ["iteration failed"]))
        if max_iterations is not None and len(decisions) >= max_iterations:
            break
        stop.wait(max(0.0, settings.interval_seconds - (time.monotonic() - started)))
    return decisions


class ControllerCommand(ControllerSettings, Command):
    """Automated canary analysis: step, promote or roll back the canary from Prometheus metrics.

    Every option is also an environment variable RELEARN_ROLLOUT_<OPTION>.
    """

    model_config = command_config("relearn-rollout-controller", "RELEARN_ROLLOUT_")

    once: bool = Field(False, description="Run one analysis iteration and exit.")
    max_iterations: int | None = Field(None, ge=1, description="Stop after this many iterations.")

    def cli_cmd(self) -> None:
        """Analyse every ``interval_seconds`` until SIGTERM/SIGINT; print each decision."""
        self.start_logging()  # JSON lines: every decision with its action, version and reason
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        settings = ControllerSettings(**self.model_dump(exclude={"once", "max_iterations", "log_level"}))
        decisions = run(settings, max_iterations=1 if self.once else self.max_iterations, stop=stop)
        for decision in decisions:
            print(decision.summary(), flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.rollout.controller``: options override the RELEARN_ROLLOUT_* environment."""
    commands.run(ControllerCommand, argv, "rollout controller")


if __name__ == "__main__":
    main()
