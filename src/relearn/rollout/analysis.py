"""Canary analysis as a pure function: metric snapshots in, a decision (step/hold/promote/rollback) out.

A gate without data reads *unknown*, never *passed*. The promotion policy (the ``evidence_*`` and
``backtest_*`` settings) says which steps need evidence of the canary's quality — by default the promotion
— and where it may come from: the canary's own labelled predictions (``min_labels`` of them, label gates
passed) or a backtest (:mod:`relearn.rollout.backtest`: the canary's and the stable model scored on the
same recent traffic whose labels have matured, compared with the gate's paired bootstrap). Without it the
canary is held at its percent; one still without evidence ``max_evidence_wait_seconds`` after it started is
rolled back (the champion keeps serving, the version is tagged with the reason).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from statistics import NormalDist
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.settings import ALERT_BUDGET


class AnalysisSettings(BaseSettings):
    """Gates and schedule of the canary analysis (environment: RELEARN_ROLLOUT_<OPTION>)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_ROLLOUT_", extra="ignore")

    steps: list[int] = Field([10, 25, 50, 100], description="Canary percents, in order; 100 means promote.")
    min_requests: int = Field(100, description="Canary requests needed in a window before any gate counts.")
    max_error_rate: float = Field(0.01, description="Highest canary error rate (errors / requests).")
    max_error_rate_increase: float = Field(0.005, description="Highest canary minus stable error rate.")
    max_p99_seconds: float = Field(0.25, description="Highest canary p99 latency.")
    max_score_divergence: float = Field(0.1, description="Highest divergence of canary vs stable scores.")
    max_drift_share_increase: float = Field(
        0.5,
        description="Highest share of drifted features on canary traffic above the stable traffic's. The "
        "split is random, so both see the same inputs: drift on both (the world moved, which is what a "
        "retrained canary answers) is no reason to roll the canary back; drift on the canary alone is.",
    )
    min_labels: int = Field(
        50, description="Labelled canary predictions needed before the label gates count."
    )
    max_precision_drop: float = Field(
        0.05, description="Tolerated drop of the canary's precision at budget below the stable's."
    )
    max_recall_drop: float = Field(
        0.05, description="Tolerated drop of the canary's recall at budget below the stable's."
    )
    label_p_value: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="A label gate fails when the canary's precision (recall) at budget is below the "
        "stable's minus the tolerated drop with a one-sided p-value under this: at a small budget a few "
        "dozen reviewed predictions carry much sampling noise, so a good canary is not rolled back on it.",
    )
    # The promotion policy: what evidence of quality a step needs, and from where.
    evidence_from_percent: int = Field(
        100,
        description="Steps to this canary percent or above need evidence of the canary's quality (100: the "
        "promotion only; 0: every step; above 100: none).",
    )
    evidence_sources: list[Literal["canary_labels", "backtest"]] = Field(
        ["canary_labels", "backtest"],
        description="Where evidence may come from: the canary's own labelled predictions (min_labels, label "
        "gates passed) and/or a backtest on recent traffic whose labels matured (needs the inference log).",
    )
    max_evidence_wait_seconds: float = Field(
        14 * 86400.0,
        gt=0,
        description="A canary still waiting for evidence this long after it started is rolled back.",
    )
    alert_budget: float = Field(ALERT_BUDGET, gt=0, lt=1, description="Share reviewed by the fraud team.")
    backtest_metric: Literal["recall_at_budget", "pr_auc", "fraud_amount_caught"] = Field(
        "recall_at_budget", description="Primary metric of the backtest's paired comparison."
    )
    backtest_min_effect: float = Field(
        -0.05,
        description="The canary's gain on the primary metric must exceed this at backtest_confidence "
        "(negative: a non-inferiority margin; the training gate already asked for a gain).",
    )
    backtest_margin: float = Field(
        0.05, ge=0, description="Non-inferiority margin of the backtest's other (guarded) metrics."
    )
    backtest_confidence: float = Field(0.975, gt=0.5, lt=1, description="One-sided confidence.")
    backtest_min_rows: int = Field(500, ge=1, description="Labelled predictions a backtest needs.")
    backtest_min_positives: int = Field(20, ge=1, description="Frauds among them a backtest needs.")
    backtest_label_maturity_seconds: float = Field(
        0.0,
        ge=0,
        description="Predictions older than (newest label time - this) count as labelled (the detector's "
        "label_maturity_s).",
    )


@dataclass(frozen=True)
class Snapshot:
    """Metrics of one analysis window (from Prometheus in the cluster, from the local stack locally)."""

    canary_requests: int
    canary_error_rate: float
    stable_error_rate: float
    canary_p99_seconds: float
    score_divergence: float
    canary_drift_share: float = 0.0
    stable_drift_share: float = 0.0
    labels: int = 0
    canary_precision: float | None = None
    stable_precision: float | None = None
    canary_recall: float | None = None
    stable_recall: float | None = None
    # Trials of those proportions: predictions reviewed at the budget (precision) and frauds (recall).
    canary_reviewed: int = 0
    stable_reviewed: int = 0
    canary_frauds: int = 0
    stable_frauds: int = 0


class Verdict(StrEnum):
    """A gate's or a piece of evidence's state: without data it is unknown, never passed."""

    PASSED = "passed"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Evidence:
    """What vouches for the canary's quality: its source, the labelled predictions and the effect.

    ``effect`` is the canary's metric minus the stable version's, ``lower``/``upper`` its one-sided bounds
    at ``confidence``; ``n`` labelled predictions, ``positives`` frauds among them.
    """

    source: str
    verdict: Verdict
    detail: str
    n: int = 0
    positives: int = 0
    metric: str | None = None
    effect: float | None = None
    lower: float | None = None
    upper: float | None = None
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the audit trail."""
        return {**asdict(self), "verdict": self.verdict.value}

    def line(self) -> str:
        """``source verdict: detail``."""
        return f"{self.source} {self.verdict.value}: {self.detail}"


class Action(StrEnum):
    """What the controller does after a window."""

    HOLD = "hold"
    STEP = "step"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Decision:
    """The action, the next percent (for step) and every failed gate (the rollback reason)."""

    action: Action
    percent: int | None = None
    failed: list[str] = field(default_factory=list)
    note: str = ""  # why a step, promotion or hold: the gates' states and the evidence
    evidence: Evidence | None = None  # what vouched for (or against) the canary's quality
    checked: list[Evidence] = field(default_factory=list)  # every source looked at

    @property
    def reason(self) -> str:
        """A one-line reason for the audit trail and the rejected-version tag."""
        return "; ".join(self.failed) or self.note or self.action.value

    def summary(self) -> str:
        """The decision in one line for a terminal (the controller's ``--once``)."""
        if self.failed or self.note:
            return f"{self.action.value}: {self.reason}"
        if self.action is Action.STEP:
            return f"step: all gates passed, canary at {self.percent}%"
        if self.action is Action.PROMOTE:
            return "promote: all gates passed, the canary is stable"
        if self.action is Action.HOLD and self.percent is not None:
            return "hold: too few canary requests in the window yet (see kubectl relearn history)"
        return f"{self.action.value}: nothing to analyse (no canary, and no shadow with a comparison to read)"


def drop_p_value(canary: float, canary_n: int, stable: float, stable_n: int, margin: float) -> float:
    """One-sided p-value that the canary's proportion is more than ``margin`` below the stable's.

    H0: canary >= stable - margin. Two independent binomial proportions (``canary`` of ``canary_n``
    trials, ``stable`` of ``stable_n``), Wald z-test; each proportion is kept half a trial away from 0
    and 1 in the variance, so a canary that caught none of a few frauds is not certain. A drop equal to
    the margin gives 0.5. 1.0 without trials or with an unknown (NaN) proportion.
    """
    if canary_n <= 0 or stable_n <= 0 or math.isnan(canary) or math.isnan(stable):
        return 1.0

    def variance(p: float, n: int) -> float:
        p = min(max(p, 0.5 / n), 1 - 0.5 / n)
        return p * (1 - p) / n

    z = (stable - margin - canary) / math.sqrt(variance(canary, canary_n) + variance(stable, stable_n))
    return 0.5 * math.erfc(z / math.sqrt(2))


def failed_gates(s: Snapshot, cfg: AnalysisSettings) -> list[str]:
    """The gates a snapshot fails (each limit is inclusive: a value equal to it passes)."""
    out = []
    if s.canary_error_rate > cfg.max_error_rate:
        out.append(f"error rate {s.canary_error_rate:.4g} > {cfg.max_error_rate:g}")
    if s.canary_error_rate - s.stable_error_rate > cfg.max_error_rate_increase:
        out.append(f"error rate above stable by {s.canary_error_rate - s.stable_error_rate:.4g}")
    if s.canary_p99_seconds > cfg.max_p99_seconds:
        out.append(f"p99 {s.canary_p99_seconds:.4g}s > {cfg.max_p99_seconds:g}s")
    if s.score_divergence > cfg.max_score_divergence:
        out.append(f"score divergence {s.score_divergence:.4g} > {cfg.max_score_divergence:g}")
    if s.canary_drift_share - s.stable_drift_share > cfg.max_drift_share_increase:
        out.append(
            f"drift share {s.canary_drift_share:.4g} above stable's {s.stable_drift_share:.4g} by more than "
            f"{cfg.max_drift_share_increase:g}"
        )
    if s.labels >= cfg.min_labels:
        for name, canary, canary_n, stable, stable_n, margin in (
            ("precision", s.canary_precision, s.canary_reviewed, s.stable_precision, s.stable_reviewed,
             cfg.max_precision_drop),
            ("recall", s.canary_recall, s.canary_frauds, s.stable_recall, s.stable_frauds,
             cfg.max_recall_drop),
        ):  # fmt: skip
            if canary is None or stable is None:
                continue
            p = drop_p_value(canary, canary_n, stable, stable_n, margin)
            if p < cfg.label_p_value:
                out.append(
                    f"{name} at budget {canary:.4g} of {canary_n} vs stable {stable:.4g} of {stable_n} "
                    f"(p={p:.2g})"
                )
    return out


def label_evidence(s: Snapshot, cfg: AnalysisSettings) -> Evidence:
    """The canary's own labels as evidence: unknown until ``min_labels`` and a fraud among them.

    Passed means the label gates ran (:func:`failed_gates` rolls back a canary they fail); the effect is
    the canary's recall at budget minus the stable's, with a Wald interval (two independent samples).
    """
    unknown = None
    if s.labels < cfg.min_labels:
        unknown = f"{s.labels} labelled canary predictions < {cfg.min_labels}"
    elif s.canary_recall is None or s.stable_recall is None or min(s.canary_frauds, s.stable_frauds) <= 0:
        unknown = f"no fraud among {s.labels} labelled canary predictions yet"
    if unknown is not None:
        return Evidence("canary-labels", Verdict.UNKNOWN, unknown, n=s.labels)
    c, r = float(s.canary_recall or 0.0), float(s.stable_recall or 0.0)  # known: checked above
    effect = c - r
    z = NormalDist().inv_cdf(cfg.backtest_confidence)
    half = z * math.sqrt(c * (1 - c) / s.canary_frauds + r * (1 - r) / s.stable_frauds)
    return Evidence(
        "canary-labels",
        Verdict.PASSED,
        f"{s.labels} labelled canary predictions ({s.canary_frauds} fraud): recall at budget {c:.3f} vs "
        f"stable {r:.3f}, label gates passed",
        n=s.labels,
        positives=s.canary_frauds,
        metric="recall_at_budget",
        effect=effect,
        lower=effect - half,
        upper=effect + half,
        confidence=cfg.backtest_confidence,
    )


def decide(
    current_percent: int,
    s: Snapshot,
    cfg: AnalysisSettings,
    evidence: Callable[[], Evidence | None] | None = None,
    waited_seconds: float = 0.0,
) -> Decision:
    """One analysis step: roll back on a failed gate, hold for traffic and for evidence, else step.

    The steps the policy names (``evidence_from_percent``) wait for evidence of the canary's quality.

    Args:
        current_percent: The canary's share now.
        s: The window's metrics.
        cfg: Gates, schedule and promotion policy.
        evidence: Called (only when a step needs evidence the canary's labels do not give) for the
            backtest's evidence; None when there is no backtest.
        waited_seconds: How long the canary has run: past ``max_evidence_wait_seconds`` without evidence
            it is rolled back.
    """
    failed = failed_gates(s, cfg)
    if failed:
        return Decision(Action.ROLLBACK, 0, failed)
    if s.canary_requests < cfg.min_requests:
        note = f"{s.canary_requests} canary requests < {cfg.min_requests} in the window"
        return Decision(Action.HOLD, current_percent, note=note)
    nxt = next((p for p in sorted(cfg.steps) if p > current_percent), 100)
    action, percent = (Action.PROMOTE, None) if nxt >= 100 else (Action.STEP, nxt)
    labels = label_evidence(s, cfg)
    gates = f"gates passed ({s.canary_requests} canary requests); label gates {labels.line()}"
    if nxt < cfg.evidence_from_percent:
        return Decision(action, percent, note=gates, checked=[labels])
    checked = [labels] if "canary_labels" in cfg.evidence_sources else []
    if labels.verdict is not Verdict.PASSED and "backtest" in cfg.evidence_sources and evidence is not None:
        found = evidence()
        checked += [found] if found is not None else []
    for ev in checked:
        if ev.verdict is Verdict.PASSED:
            return Decision(
                action, percent, note=f"{gates}; evidence: {ev.line()}", evidence=ev, checked=checked
            )
    against = next((ev for ev in checked if ev.verdict is Verdict.FAILED), None)
    if against is not None:
        return Decision(Action.ROLLBACK, 0, [against.line()], evidence=against, checked=checked)
    missing = "; ".join(ev.line() for ev in checked) or "no evidence source configured"
    if waited_seconds > cfg.max_evidence_wait_seconds:
        waited = f"{waited_seconds / 3600:.1f} h" if waited_seconds >= 3600 else f"{waited_seconds:.0f} s"
        reason = f"no evidence of quality {waited} after the canary started: {missing}"
        return Decision(Action.ROLLBACK, 0, [reason], checked=checked)
    note = f"{gates}; waiting for evidence before {nxt}%: {missing}"
    return Decision(Action.HOLD, current_percent, note=note, checked=checked)
