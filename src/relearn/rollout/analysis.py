"""Canary analysis as a pure function: metric snapshots in, a decision (step/hold/promote/rollback) out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnalysisSettings(BaseSettings):
    """Gates and schedule of the canary analysis (environment: RELEARN_ROLLOUT_<OPTION>)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_ROLLOUT_", extra="ignore")

    steps: list[int] = Field([10, 25, 50, 100], description="Canary percents, in order; 100 means promote.")
    min_requests: int = Field(100, description="Canary requests needed in a window before any gate counts.")
    max_error_rate: float = Field(0.01, description="Highest canary error rate (errors / requests).")
    max_error_rate_increase: float = Field(0.005, description="Highest canary minus stable error rate.")
    max_p99_seconds: float = Field(0.25, description="Highest canary p99 latency.")
    max_score_divergence: float = Field(0.1, description="Highest divergence of canary vs stable scores.")
    max_drift_share: float = Field(0.5, description="Highest share of drifted features on canary traffic.")
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


@dataclass(frozen=True)
class Snapshot:
    """Metrics of one analysis window (from Prometheus in the cluster, from the local stack locally)."""

    canary_requests: int
    canary_error_rate: float
    stable_error_rate: float
    canary_p99_seconds: float
    score_divergence: float
    canary_drift_share: float = 0.0
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

    @property
    def reason(self) -> str:
        """A one-line reason for the audit trail and the rejected-version tag."""
        return "; ".join(self.failed) or self.action.value

    def summary(self) -> str:
        """The decision in one line for a terminal (the controller's ``--once``)."""
        if self.failed:
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
    if s.canary_drift_share > cfg.max_drift_share:
        out.append(f"drift share {s.canary_drift_share:.4g} > {cfg.max_drift_share:g}")
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


def decide(current_percent: int, s: Snapshot, cfg: AnalysisSettings) -> Decision:
    """One analysis step: roll back on any failed gate, hold until enough traffic, else the next step."""
    failed = failed_gates(s, cfg)
    if failed:
        return Decision(Action.ROLLBACK, 0, failed)
    if s.canary_requests < cfg.min_requests:
        return Decision(Action.HOLD, current_percent)
    nxt = next((p for p in sorted(cfg.steps) if p > current_percent), 100)
    return Decision(Action.PROMOTE, None) if nxt >= 100 else Decision(Action.STEP, nxt)
