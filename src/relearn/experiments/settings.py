"""Experiment settings: money-view costs, the test's error rate, guardrails (RELEARN_EXPERIMENT_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.settings import ALERT_BUDGET


class ExperimentSettings(BaseSettings):
    """What an experiment costs, how sure it must be and when it stops at once."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_EXPERIMENT_", extra="ignore")

    store: Path | None = Field(
        None,
        description="The experiment store (default <RELEARN_HOME>/experiments/experiments.json); the "
        "transformer reads the running experiment from it.",
    )
    configmap: str | None = Field(
        None,
        description="NAMESPACE/NAME of the store's ConfigMap in the cluster (the chart's <fraud>-experiments "
        "ConfigMap, which the fraud transformers mount); unset: the local store file.",
    )
    router: str | None = Field(
        None,
        description="The experiment router VirtualService (the chart's <release>-experiment-router) in the "
        "ConfigMap's namespace: start refuses arms without a route in it.",
    )
    alert_budget: float = Field(ALERT_BUDGET, gt=0, lt=1, description="Share of transactions reviewed.")
    review_cost: float = Field(5.0, ge=0, description="Cost of reviewing one alert (analyst time).")
    missed_fraud_factor: float = Field(
        1.0, ge=0, description="Loss per unit of a missed fraud's amount (1: the amount is lost)."
    )
    chargeback_fee: float = Field(15.0, ge=0, description="Fee per missed fraud (the chargeback's handling).")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Always-valid false positive rate of the test.")
    power: float = Field(0.8, gt=0.5, lt=1, description="Power the plan sizes the experiment for.")
    relative_effect: float = Field(
        0.10, gt=0, lt=1, description="Relative change of the primary metric the plan is sized for."
    )
    max_days: int = Field(60, ge=1, description="Longest an experiment may run; the plan refuses beyond it.")
    unit_window_days: float = Field(
        7.0,
        gt=0,
        description="A card's loss is counted over its first this many days in the experiment: a fixed "
        "observation per card, so the estimand does not drift as cards accumulate transactions.",
    )
    label_maturity_days: float = Field(
        7.0, ge=0, description="Days after a card's window before its chargebacks count as complete."
    )
    refresh_grace_seconds: float = Field(
        120.0,
        ge=0,
        description="Rows scored this soon after an experiment's start are not analysed: in the cluster a "
        "replica routes by the store once the kubelet has refreshed its mounted ConfigMap (its sync period, "
        "1 minute by default, plus the watch's delay), so a card may be answered by the champion before.",
    )
    min_units: int = Field(
        500, ge=2, description="Cards per arm before the test looks (variance estimates need a burn-in)."
    )
    min_requests: int = Field(100, ge=1, description="Requests an arm needs before its error rate counts.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Guardrail: an arm's error rate.")
    max_p99_seconds: float = Field(0.25, gt=0, description="Guardrail: an arm's p99 latency.")
    max_score_drift: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Guardrail: two-sample KS statistic of an arm's scores against the control's (the "
        "detector's relearn_drift_score_divergence). Models differ by design, so this catches a broken one.",
    )
    bandit_min_share: float = Field(
        0.05,
        ge=0,
        lt=1 / 3,
        description="A bandit's floor: every arm keeps at least this share, so a slow starter can recover.",
    )
    bandit_stale_days: float = Field(
        3.0,
        gt=0,
        description="A bandit routes everything to its control (the champion) when its newest matured reward "
        "is older than this: labels stopped flowing, the posterior would steer on old news.",
    )
