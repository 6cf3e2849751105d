"""The rollout controller: automated canary analysis against Prometheus, acting through a rollout backend.

Every ``interval_seconds`` the controller reads one :class:`~relearn.rollout.analysis.Snapshot` of the
canary and the stable version from Prometheus (instant queries over ``/api/v1/query``, one PromQL per gate
in :data:`QUERIES`, selected by the ``model_version`` label of the serving metrics, live traffic only, and
the ``track`` and ``model_version`` labels of the drift detector's), calls
:func:`~relearn.rollout.analysis.decide` and acts:

* ``step``: ``backend.set_canary_percent`` to the next weight of the schedule (10 → 25 → 50 → 100);
* ``promote``: ``backend.promote`` and the MLflow ``champion`` alias moved to the canary version;
* ``rollback``: ``backend.rollback`` and the version tagged ``rollout_rejected=<reason>``;
* ``hold``: nothing (too little canary traffic in the window, or Prometheus could not answer).

Before each analysis, a stable revision that loads an alias (``models:/<name>@champion``, resolved at each
pod start) is pinned to the alias's current version (:func:`pin_stable`), so pods it starts later serve the
same model.

With a shadow and no canary, the shadow gate of :mod:`relearn.rollout.shadow` decides whether the shadow
becomes a canary: on the drift detector's comparison (``detector_url``, ``GET /v1/shadow``) in a cluster,
or on its inference log (``shadow_log``) when the controller can read the file.

Every decision taken while a canary runs is appended, with its reason and the snapshot, to the audit log.
One iteration is :func:`step`, so tests drive it directly::

    python -m relearn.rollout.controller --backend local --state .relearn/rollout/state.json
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import Field

from relearn.rollout.analysis import Action, AnalysisSettings, Decision, Snapshot, decide
from relearn.rollout.audit import AuditLog, audit_log_for
from relearn.rollout.backend import RolloutBackend, RolloutError, RolloutState, make_backend
from relearn.rollout.shadow import (
    Comparison,
    ShadowSettings,
    comparison_of,
    detector_comparison,
    events_from_log,
    shadow_ready,
)

log = logging.getLogger(__name__)

ACTOR = "relearn-rollout-controller"
REJECTED_TAG = "rollout_rejected"
CHAMPION = "champion"

# One PromQL per gate. Placeholders: {component}, {version} (model_version label), {window} (range),
# {track} (drift detector track), {p} (p-value under which a feature counts as drifted).
# Live traffic only: requests mirrored to a shadow (track="mirror", see relearn.serving.metrics) and, in a
# cluster, every pod of the shadow InferenceService (relearn_io_role="shadow", a target label of the
# ServiceMonitor; it also covers gRPC mirrors, whose :authority Python servers cannot read) stay out of a
# version's canary windows. Series without these labels match.
_SEL = 'component="{component}",model_version="{version}",track!="mirror",relearn_io_role!="shadow"'
_ERR = _SEL + ',outcome=~"error|unavailable"'
_VERSION = 'track="{track}",model_version="{version}"'
QUERIES: dict[str, str] = {
    "requests": "sum(increase(relearn_serving_requests_total{{" + _SEL + "}}[{window}]))",
    "error_rate": "sum(rate(relearn_serving_requests_total{{" + _ERR + "}}[{window}]))"
    " / sum(rate(relearn_serving_requests_total{{" + _SEL + "}}[{window}]))",
    "p99_seconds": "max(histogram_quantile(0.99, sum by (le, stage) "
    "(rate(relearn_serving_stage_duration_seconds_bucket{{" + _SEL + "}}[{window}]))))",
    "score_divergence": 'max(relearn_drift_score_divergence{{track="{track}"}})',
    "drift_share": 'count(relearn_drift_p_value{{track="{track}"}} < {p})'
    ' / count(relearn_drift_p_value{{track="{track}"}})',
    "labelled": "max(relearn_drift_version_labelled_predictions{{" + _VERSION + "}})",
    "precision": "max(relearn_drift_version_precision_at_budget{{" + _VERSION + "}})",
    "recall": "max(relearn_drift_version_recall_at_budget{{" + _VERSION + "}})",
    "reviewed": "max(relearn_drift_version_reviewed_predictions{{" + _VERSION + "}})",
    "frauds": "max(relearn_drift_version_frauds{{" + _VERSION + "}})",
}


class ControllerSettings(AnalysisSettings):
    """Where the controller acts and reads, plus the analysis gates (environment: RELEARN_ROLLOUT_*)."""

    backend: Literal["kubernetes", "local"] = Field("kubernetes", description="Where to act.")
    namespace: str = Field("default", description="Namespace of the InferenceService.")
    inference_service: str = Field("relearn-fraud", description="The fraud InferenceService.")
    virtual_service: str | None = Field(None, description="The mirroring VirtualService.")
    shadow_service: str | None = Field(None, description="The shadow InferenceService.")
    model_name: str = Field("relearn-fraud", description="Registered model name.")
    state: Path | None = Field(None, description="Local router state file (backend local).")
    audit_log: Path | None = Field(None, description="Audit JSONL file; default <RELEARN_HOME>/rollout/.")
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
        "instead of the log file, which in a cluster is on the detector's own volume. Wins over shadow_log.",
    )
    detector_timeout_seconds: float = Field(10.0, description="Timeout of one shadow comparison request.")


# ------------------------------------------------------------------------------------------- Prometheus
class PrometheusError(RuntimeError):
    """Prometheus could not answer a query (unreachable, bad query, error status)."""


class Prometheus:
    """Instant queries over the HTTP API (``GET /api/v1/query``).

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:9090``.
        timeout: Seconds per query.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The value of a query returning one sample (a scalar or a one-element vector).

        Returns:
            The value, or None for an empty result or NaN (e.g. a rate over a series with no samples).

        Raises:
            PrometheusError: Unreachable server, error status or a result with several series.
        """
        try:
            resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"query failed: {exc}") from exc
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', resp.status_code)}: {body.get('error', '')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            raw = data["result"][1]
        elif data["resultType"] == "vector":
            if not data["result"]:
                return None
            if len(data["result"]) > 1:
                raise PrometheusError(f"expected one series, got {len(data['result'])}: {promql}")
            raw = data["result"][0]["value"][1]
        else:
            raise PrometheusError(f"unexpected result type {data['resultType']}")
        value = float(raw)
        return None if math.isnan(value) else value


def render(gate: str, settings: ControllerSettings, *, version: str | None = None, track: str = "") -> str:
    """The PromQL of one gate for a version (serving metrics) or a track (drift metrics)."""
    return QUERIES[gate].format(
        component=settings.component,
        version=version or "",
        window=settings.window,
        track=track,
        p=settings.drift_p_value,
    )


def read_snapshot(prometheus: Prometheus, settings: ControllerSettings, stable: str, canary: str) -> Snapshot:
    """One analysis window of the canary against the stable version.

    Missing series count as zero (no traffic, no errors, no drift); the label gates compare the canary
    version's precision and recall with the stable version's, with their trials (reviewed predictions,
    frauds), once the drift detector publishes them (it does per version once 50 of its predictions are
    labelled) and ``min_labels`` canary predictions are.
    """

    def q(gate: str, **kw: Any) -> float | None:
        return prometheus.query(render(gate, settings, **kw))

    versions = {"canary": canary, "stable": stable}
    label = {
        (gate, t): q(gate, track=t, version=v)
        for gate in ("precision", "recall", "reviewed", "frauds")
        for t, v in versions.items()
    }
    return Snapshot(
        canary_requests=round(q("requests", version=canary) or 0),
        canary_error_rate=q("error_rate", version=canary) or 0.0,
        stable_error_rate=q("error_rate", version=stable) or 0.0,
        canary_p99_seconds=q("p99_seconds", version=canary) or 0.0,
        score_divergence=q("score_divergence", track="canary") or 0.0,
        canary_drift_share=q("drift_share", track="canary") or 0.0,
        labels=round(q("labelled", track="canary", version=canary) or 0),
        canary_precision=label["precision", "canary"],
        stable_precision=label["precision", "stable"],
        canary_recall=label["recall", "canary"],
        stable_recall=label["recall", "stable"],
        canary_reviewed=round(label["reviewed", "canary"] or 0),
        stable_reviewed=round(label["reviewed", "stable"] or 0),
        canary_frauds=round(label["frauds", "canary"] or 0),
        stable_frauds=round(label["frauds", "stable"] or 0),
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
) -> Decision:
    """One analysis iteration: snapshot, decision, action, audit entry.

    With no canary but a shadow, and ``shadow_comparison`` (see :func:`shadow_source`) or ``shadow_events``
    to compare it with stable, the shadow gate decides whether the shadow becomes a canary at the first step.

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
    decision = decide(state.canary_percent, snapshot, settings)
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
    if decision.action is Action.HOLD:
        reason = f"{snapshot.canary_requests} canary requests < {settings.min_requests} in {settings.window}"
    elif decision.action is not Action.ROLLBACK:
        reason = f"all gates passed over {settings.window} ({snapshot.canary_requests} canary requests)"
    audit.append(
        action,
        actor=ACTOR,
        reason=reason,
        version=canary,
        stable=stable,
        percent=decision.percent,
        snapshot=asdict(snapshot),
        state=state.to_dict(),
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
                step(backend, prometheus, registry, settings, audit, shadow_comparison=comparison)
            )
        except Exception:  # a failed iteration (API server down, ...) must not kill the controller
            log.exception("analysis iteration failed")
            decisions.append(Decision(Action.HOLD, None, ["iteration failed"]))
        if max_iterations is not None and len(decisions) >= max_iterations:
            break
        stop.wait(max(0.0, settings.interval_seconds - (time.monotonic() - started)))
    return decisions


def main(argv: list[str] | None = None) -> None:
    """``python -m relearn.rollout.controller``: options override the RELEARN_ROLLOUT_* environment."""
    fields = ControllerSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="relearn-rollout-controller",
        description="Automated canary analysis: step, promote or roll back the canary from Prometheus "
        "metrics. Every option can be set as RELEARN_ROLLOUT_<OPTION>.",
    )
    for name in (
        "backend", "namespace", "inference_service", "virtual_service", "shadow_service", "model_name",
        "state", "audit_log", "prometheus_url", "interval_seconds", "window", "shadow_log", "detector_url",
    ):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=fields[name].description)
    parser.add_argument("--once", action="store_true", help="run one analysis iteration and exit")
    parser.add_argument("--max-iterations", type=int, help="stop after this many iterations")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    settings = ControllerSettings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    decisions = run(settings, max_iterations=1 if args.once else args.max_iterations, stop=stop)
    for decision in decisions:
        print(decision.summary(), flush=True)


if __name__ == "__main__":
    main()
