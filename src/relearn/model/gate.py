"""The promotion gate: may a freshly trained candidate replace the champion?

Both sets of metrics must come from :func:`relearn.model.evaluate.evaluate` on the *same* rows (the
pipeline re-scores the champion on the candidate's test set), otherwise the comparison is meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field


class GateParams(BaseModel):
    """What a candidate must achieve to be promoted."""

    primary_metric: Literal["recall_at_budget", "pr_auc"] = "recall_at_budget"
    min_improvement: float = Field(
        0.0, description="Absolute gain on the primary metric over the champion (negative = tolerated loss)."
    )
    max_slice_regression: float = Field(
        0.05, ge=0, description="Largest absolute drop of a slice's primary metric vs the champion."
    )
    min_slice_positives: int = Field(
        20,
        ge=1,
        description="Slices with fewer positives (in either model's evaluation) are too noisy to gate.",
    )
    baseline_tolerance: float = Field(
        0.0, ge=0, description="Without a champion, how far below the baseline the candidate may be."
    )


@dataclass
class GateDecision:
    """The gate's verdict, with a one-line reason a person can read and the numbers behind it."""

    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def slice_regressions(
    candidate_metrics: dict[str, Any], champion_metrics: dict[str, Any], params: GateParams
) -> list[dict[str, Any]]:
    """Slices (with enough positives on both sides) where the candidate drops by more than allowed."""
    found = []
    for group, values in candidate_metrics.get("slices", {}).items():
        for value, cand in values.items():
            champ = champion_metrics.get("slices", {}).get(group, {}).get(value)
            if champ is None or min(cand["positives"], champ["positives"]) < params.min_slice_positives:
                continue
            c, r = cand.get(params.primary_metric), champ.get(params.primary_metric)
            if c is not None and r is not None and r - c > params.max_slice_regression:
                found.append({"slice": f"{group}={value}", "candidate": c, "champion": r, "drop": r - c})
    return found


def gate(
    candidate_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    params: GateParams | None = None,
    baseline_metrics: dict[str, Any] | None = None,
) -> GateDecision:
    """Decide whether the candidate may be promoted.

    With a champion: the primary metric must improve by at least ``min_improvement`` and no slice with
    enough positives may regress by more than ``max_slice_regression``. Without one (first model): the
    candidate must not fall below the baseline by more than ``baseline_tolerance``; with neither, the
    gate fails closed because nothing vouches for the candidate.
    """
    params = params or GateParams()
    metric = params.primary_metric
    cand = candidate_metrics.get(metric)
    details: dict[str, Any] = {"primary_metric": metric, "candidate": cand, "params": params.model_dump()}
    if cand is None:
        return GateDecision(
            False, f"candidate has no {metric} (no positives in the evaluation set?)", details
        )

    if champion_metrics is None:
        base = (baseline_metrics or {}).get(metric)
        details["baseline"] = base
        if base is None:
            return GateDecision(False, f"no champion and no baseline {metric} to compare against", details)
        if cand < base - params.baseline_tolerance:
            return GateDecision(
                False, f"no champion; {metric} {cand:.4f} is below the baseline {base:.4f}", details
            )
        return GateDecision(True, f"no champion; {metric} {cand:.4f} vs baseline {base:.4f}", details)

    champ = champion_metrics.get(metric)
    details["champion"] = champ
    if champ is not None and cand - champ < params.min_improvement:
        return GateDecision(
            False,
            f"{metric} {cand:.4f} vs champion {champ:.4f}: gain {cand - champ:+.4f} "
            f"is below the required {params.min_improvement:+.4f}",
            details,
        )
    regressions = slice_regressions(candidate_metrics, champion_metrics, params)
    details["slice_regressions"] = regressions
    if regressions:
        worst = max(regressions, key=lambda r: r["drop"])
        return GateDecision(
            False,
            f"{len(regressions)} slice(s) regress by more than {params.max_slice_regression:.3f}; "
            f"worst {worst['slice']}: {worst['champion']:.4f} -> {worst['candidate']:.4f}",
            details,
        )
    champ_text = "n/a" if champ is None else f"{champ:.4f}"
    return GateDecision(True, f"{metric} {cand:.4f} vs champion {champ_text}; no slice regression", details)
