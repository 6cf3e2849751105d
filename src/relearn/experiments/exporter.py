"""Prometheus metrics per experiment and arm (labels bounded: experiment and arm names, guardrail names).

The controller (or the local stack) calls the ``update_*`` methods after each look, routing change and
guardrail check; serving them is the caller's (``prometheus_client.start_http_server`` or its ASGI app).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from relearn.experiments.guardrails import GuardrailCheck
from relearn.experiments.result import Decision, Result


class ExperimentMetrics:
    """The experiment gauges and counters, in ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        kw = {"registry": self.registry}
        self.arm_share = Gauge(
            "relearn_experiment_arm_share",
            "Share of traffic routed to the arm (0-1).",
            ("experiment", "arm"),
            **kw,
        )
        self.arm_cards = Gauge(
            "relearn_experiment_arm_cards",
            "Cards of the arm counted by the test.",
            ("experiment", "arm"),
            **kw,
        )
        self.arm_loss = Gauge(
            "relearn_experiment_arm_loss_per_card",
            "The arm's loss per card (currency units).",
            ("experiment", "arm"),
            **kw,
        )
        self.p_value = Gauge(
            "relearn_experiment_p_value", "Always-valid p-value of the latest look.", ("experiment",), **kw
        )
        self.effect = Gauge(
            "relearn_experiment_effect",
            "Treatment minus control loss per card, and its bounds.",
            ("experiment", "bound"),
            **kw,
        )
        self.running = Gauge(
            "relearn_experiment_running", "1 while the experiment runs, else 0.", ("experiment",), **kw
        )
        self.fallback = Gauge(
            "relearn_experiment_bandit_fallback",
            "1 while a bandit routes everything to its control because its rewards are stale, else 0.",
            ("experiment",),
            **kw,
        )
        self.reward_age = Gauge(
            "relearn_experiment_bandit_reward_age_seconds",
            "Age of a bandit's newest matured reward at its last update.",
            ("experiment",),
            **kw,
        )
        self.breaches = Counter(
            "relearn_experiment_guardrail_breaches",
            "Guardrail breaches seen.",
            ("experiment", "arm", "guardrail"),
            **kw,
        )

    def update_shares(self, experiment: str, shares: dict[str, float]) -> None:
        """The routing shares now (a split's percents / 100, or the bandit's shares)."""
        for arm, share in shares.items():
            self.arm_share.labels(experiment, arm).set(share)

    def update_routing(self, record: dict[str, Any] | None) -> None:
        """The running experiment as the store holds it (None: none runs): its shares, and a bandit's state.

        The previous experiment's series are removed, so a stopped experiment's shares do not linger.
        """
        for gauge in (self.arm_share, self.running, self.fallback, self.reward_age):
            gauge.clear()
        if record is None:
            return
        name = record["name"]
        self.running.labels(name).set(1.0)
        self.update_shares(name, record.get("shares") or {a: p / 100 for a, p in record["split"].items()})
        bandit = record.get("bandit")
        if bandit and "fallback" in bandit:  # updated at least once
            self.fallback.labels(name).set(float(bandit["fallback"]))
            self.reward_age.labels(name).set(bandit["reward_age_s"])

    def update_result(self, result: Result) -> None:
        """The latest look's numbers and whether the experiment still runs."""
        self.running.labels(result.experiment).set(float(result.decision == Decision.RUNNING))
        for arm, n in result.samples.items():
            self.arm_cards.labels(result.experiment, arm).set(n)
        for arm, metrics in result.arms.items():
            if "loss_per_card" in metrics:
                self.arm_loss.labels(result.experiment, arm).set(metrics["loss_per_card"])
        if result.p_value is not None:
            self.p_value.labels(result.experiment).set(result.p_value)
            for bound, value in (
                ("estimate", result.effect),
                ("lower", result.lower),
                ("upper", result.upper),
            ):
                self.effect.labels(result.experiment, bound).set(value)

    def record_guardrails(self, experiment: str, check: GuardrailCheck) -> None:
        """Count each breach of a guardrail check."""
        for b in check.breaches:
            self.breaches.labels(experiment, b.arm, b.guardrail).inc()


@cache
def default_metrics() -> ExperimentMetrics:
    """The experiment metrics in prometheus-client's default registry (the one a server's /metrics shows).

    Created once per process: registering the same names twice in one registry is an error.
    """
    return ExperimentMetrics(REGISTRY)
