"""The shadow → canary gate: the shadow comparison as metrics and as a gate.

The comparison itself (stable and shadow predictions of the same requests joined: agreement, mean absolute
score difference, KS statistic) is :mod:`relearn.monitoring.comparison`, which the drift detector serves
too; its names are re-exported here. They are exported as gauges (``relearn_rollout_shadow_*`` and
``relearn_rollout_score_ks{track}``; the controller's canary score-divergence gate reads the drift
detector's ``relearn_drift_score_divergence``) and checked by :func:`shadow_ready` before a shadow is moved
to canary. The events come from the drift detector's inference log (:func:`events_from_log`) or from any
iterable of :class:`relearn.monitoring.payloads.Event`-like objects. In a cluster the controller cannot
open that log (the detector's volume is ReadWriteOnce): the detector serves :func:`comparison_of` its log
as ``GET /v1/shadow`` and the controller reads it with :func:`detector_comparison`. This module needs no
torch, KServe or Feast: the detector's own environment (numpy<2) imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.monitoring.comparison import (
    Comparison,
    compare,
    comparison_of,
    events_from_log,
    join,
    ks_statistic,
    request_ids,
)

__all__ = [
    "Comparison",
    "ShadowMetrics",
    "ShadowSettings",
    "compare",
    "comparison_of",
    "detector_comparison",
    "evaluate",
    "events_from_log",
    "join",
    "ks_statistic",
    "request_ids",
    "shadow_ready",
]


class ShadowSettings(BaseSettings):
    """The shadow → canary gate (environment: RELEARN_ROLLOUT_SHADOW_<OPTION>)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_ROLLOUT_SHADOW_", extra="ignore")

    threshold: float = Field(0.5, description="Decision threshold applied to both scores.")
    min_pairs: int = Field(200, description="Joined predictions needed before the gate can pass.")
    min_agreement: float = Field(0.98, description="Lowest share of equal decisions.")
    max_mean_abs_diff: float = Field(0.05, description="Highest mean absolute score difference.")
    max_ks: float = Field(0.1, description="Highest KS statistic between the score samples.")


def shadow_ready(comparison: Comparison, settings: ShadowSettings | None = None) -> tuple[bool, str]:
    """The gate before a shadow becomes a canary: enough pairs, agreement and divergence within limits.

    Limits are inclusive (a value equal to its limit passes).

    Returns:
        ``(passed, reason)``; the reason lists every failed check, or summarises the comparison.
    """
    s = settings or ShadowSettings()
    c = comparison
    if c.pairs < s.min_pairs:
        return False, f"only {c.pairs} joined predictions < {s.min_pairs}"
    failed = []
    if c.agreement < s.min_agreement:
        failed.append(f"agreement {c.agreement:.4g} < {s.min_agreement:g}")
    if c.mean_abs_diff > s.max_mean_abs_diff:
        failed.append(f"mean abs score difference {c.mean_abs_diff:.4g} > {s.max_mean_abs_diff:g}")
    if c.ks > s.max_ks:
        failed.append(f"KS {c.ks:.4g} > {s.max_ks:g}")
    if failed:
        return False, "; ".join(failed)
    return (
        True,
        f"{c.pairs} pairs: agreement {c.agreement:.4g}, mean abs diff {c.mean_abs_diff:.4g}, KS {c.ks:.4g}",
    )


class ShadowMetrics:
    """Gauges of the last comparison (own registry by default; bounded label ``track``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.pairs = Gauge(
            "relearn_rollout_shadow_pairs", "Joined predictions compared.", ["track"], registry=r
        )
        self.agreement = Gauge(
            "relearn_rollout_shadow_agreement",
            "Share of equal decisions at the threshold.",
            ["track"],
            registry=r,
        )
        self.mae = Gauge(
            "relearn_rollout_shadow_score_mean_abs_diff",
            "Mean absolute score difference.",
            ["track"],
            registry=r,
        )
        self.ks = Gauge(
            "relearn_rollout_score_ks",
            "KS statistic of the track's scores versus stable.",
            ["track"],
            registry=r,
        )
        self.ready = Gauge(
            "relearn_rollout_shadow_ready", "1 when the shadow passes the canary gate.", ["track"], registry=r
        )

    def update(self, comparison: Comparison, ready: bool, track: str = "shadow") -> None:
        """Publish one comparison."""
        self.pairs.labels(track).set(comparison.pairs)
        self.agreement.labels(track).set(comparison.agreement)
        self.mae.labels(track).set(comparison.mean_abs_diff)
        self.ks.labels(track).set(comparison.ks)
        self.ready.labels(track).set(1.0 if ready else 0.0)


def detector_comparison(
    url: str, version: str | None, settings: ShadowSettings | None = None, timeout: float = 10.0
) -> Comparison:
    """The drift detector's comparison of shadow ``version`` with stable (``GET <url>/v1/shadow``).

    Raises:
        httpx.HTTPError: The detector is unreachable or answers an error.
    """
    import httpx

    params: dict[str, Any] = {"threshold": (settings or ShadowSettings()).threshold}
    if version is not None:
        params["version"] = version
    resp = httpx.get(f"{url.rstrip('/')}/v1/shadow", params=params, timeout=timeout)
    resp.raise_for_status()
    return Comparison.from_dict(resp.json())


def evaluate(
    events: Iterable[Any],
    settings: ShadowSettings | None = None,
    *,
    metrics: ShadowMetrics | None = None,
    key: Literal["ce_id", "transaction_id"] = "ce_id",
    shadow_version: str | None = None,
) -> tuple[Comparison, bool, str]:
    """Join, compare, gate and (optionally) publish: the whole shadow check in one call."""
    s = settings or ShadowSettings()
    comparison = comparison_of(events, s.threshold, key=key, shadow_version=shadow_version)
    ready, reason = shadow_ready(comparison, s)
    if metrics is not None:
        metrics.update(comparison, ready)
    return comparison, ready, reason
