"""Guardrails: limits on an arm's health that stop an experiment at once, whatever the test says.

A pure decision: numbers in (from Prometheus in the cluster, from the local stack locally), breaches out.
A missing number is reported as unknown, never as passed, and does not stop the experiment by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from relearn.experiments.settings import ExperimentSettings


@dataclass(frozen=True)
class ArmHealth:
    """One arm's health over the experiment's latest window."""

    arm: str
    requests: int = 0
    errors: int = 0
    p99_seconds: float | None = None
    score_drift: float | None = None  # KS statistic against the control's scores (None for the control)


@dataclass(frozen=True)
class Breach:
    """A guardrail crossed: which arm, which limit, the value and the limit."""

    arm: str
    guardrail: str
    value: float
    limit: float

    def __str__(self) -> str:
        return f"{self.arm}: {self.guardrail} {self.value:.4g} > {self.limit:.4g}"


@dataclass(frozen=True)
class GuardrailCheck:
    """The outcome: stop now if any breach; ``unknown`` lists the guardrails without data."""

    breaches: list[Breach] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def stop(self) -> bool:
        """Whether the experiment must stop now."""
        return bool(self.breaches)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"stop": self.stop, "breaches": [asdict(b) for b in self.breaches], "unknown": self.unknown}


def score_drift(scores: np.ndarray, control_scores: np.ndarray) -> float:
    """Two-sample KS statistic of an arm's scores against the control's (the detector's divergence)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(scores), np.asarray(control_scores)).statistic)


def check(arms: Sequence[ArmHealth], settings: ExperimentSettings | None = None) -> GuardrailCheck:
    """Every arm against the limits of ``settings`` (``max_error_rate``, ``max_p99_seconds``, ...)."""
    s = settings or ExperimentSettings()
    breaches, unknown = [], []
    for h in arms:
        if h.requests >= s.min_requests:
            rate = h.errors / h.requests
            if rate > s.max_error_rate:
                breaches.append(Breach(h.arm, "error_rate", rate, s.max_error_rate))
        else:
            unknown.append(f"{h.arm}: error_rate ({h.requests} < {s.min_requests} requests)")
        if h.p99_seconds is None:
            unknown.append(f"{h.arm}: p99_seconds")
        elif h.p99_seconds > s.max_p99_seconds:
            breaches.append(Breach(h.arm, "p99_seconds", h.p99_seconds, s.max_p99_seconds))
        if h.score_drift is not None and h.score_drift > s.max_score_drift:
            breaches.append(Breach(h.arm, "score_drift", h.score_drift, s.max_score_drift))
    return GuardrailCheck(breaches, unknown)
