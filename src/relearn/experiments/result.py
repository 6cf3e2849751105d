"""The experiment's outcome: the decision, a JSON-ready record for the audit trail, the effect plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from relearn.experiments.guardrails import GuardrailCheck
from relearn.experiments.sequential import Look


class Decision(StrEnum):
    """What the experiment concluded (or that it has not yet)."""

    RUNNING = "running"
    WINNER = "winner"
    NO_DIFFERENCE = "no difference"
    STOPPED = "stopped by guardrail"


@dataclass(frozen=True)
class Result:
    """Decision, winner, effect on the loss per card with its always-valid interval, samples, duration."""

    experiment: str
    control: str
    treatment: str
    decision: Decision
    winner: str | None
    effect: float | None  # treatment minus control, loss per card (negative: the treatment loses less)
    relative_effect: float | None
    lower: float | None
    upper: float | None
    p_value: float | None
    samples: dict[str, int]
    days: float
    reason: str
    breaches: list[str] = field(default_factory=list)
    arms: dict[str, Any] = field(default_factory=dict)  # per-arm metrics (ArmMetrics.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the audit trail and MLflow tags."""
        out = asdict(self)
        out["decision"] = str(self.decision)
        return out


def decide(
    experiment: str,
    control: str,
    treatment: str,
    history: Sequence[Look],
    *,
    days: float,
    max_days: int,
    guardrails: GuardrailCheck | None = None,
    arms: Mapping[str, Any] | None = None,
) -> Result:
    """The decision after the latest look: guardrails first, then the test, then the time limit.

    A significant look names the arm with the lower loss per card; reaching ``max_days`` without one is
    "no difference" (the interval says how large a difference could still hide).
    """
    last = history[-1] if history else None
    breaches = [str(b) for b in guardrails.breaches] if guardrails else []
    winner = None
    if breaches:
        decision, reason = Decision.STOPPED, "; ".join(breaches)
    elif last is not None and last.significant:
        decision, winner = Decision.WINNER, treatment if last.effect < 0 else control
        reason = f"always-valid p {last.p_value:.4g}: {winner} loses less per card"
    elif days >= max_days:
        decision, reason = Decision.NO_DIFFERENCE, f"no significant difference in {max_days} days"
    else:
        decision, reason = Decision.RUNNING, "no significant difference yet"
    return Result(
        experiment=experiment,
        control=control,
        treatment=treatment,
        decision=decision,
        winner=winner,
        effect=last.effect if last else None,
        relative_effect=last.relative_effect if last else None,
        lower=last.lower if last else None,
        upper=last.upper if last else None,
        p_value=last.p_value if last else None,
        samples={control: last.n_control, treatment: last.n_treatment} if last else {},
        days=days,
        reason=reason,
        breaches=breaches,
        arms={k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in (arms or {}).items()},
    )


def plot_effect(history: Sequence[Look], days: Sequence[float], path: str | Path, title: str = "") -> Path:
    """The cumulative effect after each look and its always-valid confidence band, as a PNG."""
    from relearn.model.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    effect = [h.effect for h in history]
    ax.fill_between(days, [h.lower for h in history], [h.upper for h in history], alpha=0.25, label="95% CS")
    ax.plot(days, effect, marker="o", ms=3, label="effect (treatment - control)")
    ax.axhline(0.0, color="black", lw=0.8)
    finite = [v for h in history for v in (h.lower, h.upper) if abs(v) != float("inf")]
    if finite:  # the first looks' bands can be unbounded: clip the axis to what is drawn
        ax.set_ylim(min(finite + effect) * 1.1, max(finite + effect) * 1.1)
    ax.set_xlabel("day")
    ax.set_ylabel("loss per card")
    ax.set_title(title or "cumulative effect on loss per card")
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tag_prefix(experiment: str) -> str:
    """``relearn.experiment.<name>``, the name cut to the characters MLflow tag keys allow."""
    return "relearn.experiment." + "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)


def mlflow_tags(result: Result) -> dict[str, str]:
    """Tags for each arm's model version (``MlflowClient.set_model_version_tag``), keyed by experiment."""
    key = tag_prefix(result.experiment)

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    return {
        f"{key}.decision": str(result.decision),
        f"{key}.winner": result.winner or "",
        f"{key}.effect": fmt(result.effect),
        f"{key}.interval": f"[{fmt(result.lower)}, {fmt(result.upper)}]",
        f"{key}.p_value": fmt(result.p_value),
        f"{key}.days": fmt(result.days),
    }
