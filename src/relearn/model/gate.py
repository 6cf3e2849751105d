"""The promotion gate: may a freshly trained candidate replace the champion?

Both sets of metrics must come from :func:`relearn.model.evaluate.evaluate` on the *same* rows (the
pipeline re-scores the champion on the candidate's test set), otherwise the comparison is meaningless.
On a holdout with a few hundred frauds two equivalent models differ by a few frauds of noise, so the gate
does not compare point estimates: it reads the paired bootstrap of :mod:`relearn.model.stats` (both
models resampled on the same rows) and promotes when the primary metric's one-sided lower bound at
``confidence`` clears ``min_improvement`` and no guarded metric may be worse by more than the
non-inferiority margin. Whatever the metrics say, the candidate must also pass the behavioral suite
(:mod:`relearn.model.behavioral`): no test may fail on more than its share of cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from relearn.model.stats import summary

GateMetric = Literal["recall_at_budget", "pr_auc", "fraud_amount_caught"]


class GateParams(BaseModel):
    """What a candidate must achieve to be promoted."""

    primary_metric: GateMetric = "recall_at_budget"
    min_improvement: float = Field(
        0.01,
        description="The primary metric's gain over the champion must exceed this with `confidence` (its "
        "one-sided lower bound); negative = a tolerated loss (non-inferiority). Networks trained alike "
        "differ by about a point of recall at budget by seed alone: a smaller gain is not worth a rollout.",
    )
    confidence: float = Field(
        0.975,
        gt=0.5,
        lt=1,
        description="One-sided confidence of the bounds: 0.975 is the lower end of a 95 % interval. At 0.95, "
        "models trained alike (whose seeds truly differ a little) were promoted in ~6 % of runs.",
    )
    guarded_metrics: list[GateMetric] = Field(
        ["recall_at_budget", "pr_auc"],
        description="Metrics besides the primary one whose lower bound must stay above "
        "-non_inferiority_margin.",
    )
    non_inferiority_margin: float = Field(
        0.02, ge=0, description="Largest loss on a guarded metric the gate accepts (at `confidence`)."
    )
    warm_min_improvement: float | None = Field(
        None,
        description="min_improvement for a candidate that fine-tuned the champion (train_mode warm); None: "
        "min_improvement. The pipeline's default, -0.02, asks a fine-tuned champion only not to be worse.",
    )

    def for_candidate(self, warm: bool) -> GateParams:
        """The parameters that apply: a fine-tuned champion's required gain is ``warm_min_improvement``.

        It is the champion plus the newest data: the value of that freshness (``benchmarks.freshness``)
        is a gain a holdout of a hundred frauds cannot confirm (``benchmarks.drift_response``), so it is
        asked not to be worse, where a model trained from scratch must show a gain.
        """
        if not warm or self.warm_min_improvement is None:
            return self
        return self.model_copy(update={"min_improvement": self.warm_min_improvement})

    n_boot: int = Field(1000, ge=100, description="Paired bootstrap resamples of the holdout.")
    seed: int = Field(0, description="Seed of the bootstrap resamples (the gate is reproducible).")
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
    max_behavioral_failure_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of failing cases of a behavioral test that declares no max_failure_rate "
        "of its own (1 turns the behavioral gate off).",
    )


@dataclass
class GateDecision:
    """The gate's verdict, with a one-line reason a person can read and the numbers behind it."""

    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def tags(self) -> dict[str, Any]:
        """The verdict as MLflow model-version tags.

        ``gate.passed``, ``gate.reason`` and, against a champion, ``gate.<metric>.difference`` /
        ``.lower`` / ``.upper`` at ``gate.confidence`` on ``gate.rows`` holdout rows.
        """
        tags: dict[str, Any] = {"gate.passed": self.passed, "gate.reason": self.reason}
        paired = self.details.get("paired") or {}
        if paired:
            tags["gate.confidence"] = self.details["params"]["confidence"]
            tags["gate.rows"] = self.details["paired_rows"]["n"]
            tags["gate.positives"] = self.details["paired_rows"]["positives"]
        for name, row in paired.items():
            tags |= {f"gate.{name}.{k}": row[k] for k in ("difference", "lower", "upper")}
        for name, row in (self.details.get("behavioral") or {}).items():
            tags[f"gate.behavioral.{name}.failure_rate"] = row["failure_rate"]
            tags[f"gate.behavioral.{name}.passed"] = "unknown" if row["passed"] is None else row["passed"]
        return tags


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


def paired_rule(paired: dict[str, Any], params: GateParams) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Read a paired bootstrap (:func:`relearn.model.stats.paired_bootstrap`) with the gate's rule.

    Returns:
        The failed conditions (empty: the candidate is better on the primary metric and not worse on the
        guarded ones) and, per metric, the difference with its bounds, its ``role`` (primary, guarded,
        reported), the ``required`` lower bound and whether it ``passed``.
    """
    rows = summary(paired, params.confidence)
    failed = []
    for name, row in rows.items():
        if name == params.primary_metric:
            role, required = "primary", params.min_improvement
        elif name in params.guarded_metrics:
            role, required = "guarded", -params.non_inferiority_margin
        else:
            row |= {"role": "reported", "required": None, "passed": None}
            continue
        lower = row["lower"]
        passed = lower is not None and lower > required
        row |= {"role": role, "required": required, "passed": passed}
        if passed:
            continue
        if lower is None:
            failed.append(f"{name}: undefined on these rows (no fraud?)")
        elif role == "primary":
            failed.append(
                f"{name} gain {row['difference']:+.4f} is not significant: its "
                f"{100 * params.confidence:g} % lower bound {lower:+.4f} <= {required:+.4f}"
            )
        else:
            failed.append(
                f"{name} may be worse: {row['difference']:+.4f}, {100 * params.confidence:g} % lower bound "
                f"{lower:+.4f} <= -{params.non_inferiority_margin:.4f} (non-inferiority margin)"
            )
    if params.primary_metric not in rows:
        failed.append(f"no paired {params.primary_metric}")
    return failed, rows


def describe(rows: dict[str, dict[str, Any]], confidence: float) -> str:
    """The differences in one line: ``metric +d [lower, upper]`` for each gated metric."""
    return (
        "; ".join(
            f"{name} {row['difference']:+.4f} [{row['lower']:+.4f}, {row['upper']:+.4f}]"
            for name, row in rows.items()
            if row.get("role") in ("primary", "guarded") and row["lower"] is not None
        )
        + f" ({200 * confidence - 100:g} % interval)"
    )


def behavioral_rule(
    results: dict[str, Any], params: GateParams
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Read behavioral results (:func:`relearn.model.behavioral.run_suite`) with the gate's rule.

    Returns:
        The failed tests, each as ``name: rate of n cases (max m); e.g. <first failing case>``, and per
        test its ``failure_rate``, ``max_failure_rate``, ``cases`` and ``passed`` (None: no case, unknown).
    """
    failed, rows = [], {}
    for name, test in results.get("tests", {}).items():
        rate, cases = test["failure_rate"], test["cases"]
        limit = test["max_failure_rate"]
        limit = params.max_behavioral_failure_rate if limit is None else limit
        passed = None if rate is None else rate <= limit
        rows[name] = {"failure_rate": rate, "max_failure_rate": limit, "cases": cases, "passed": passed}
        if passed is False:
            case = test["failing"][0]
            scores = f"{case['score']:.4f} -> {case['perturbed_score']:.4f}"
            failed.append(
                f"{name} failed {rate:.1%} of {cases} cases (max {limit:.0%}), "
                f"e.g. {case['transaction_id']}: {case['changed']}: score {scores}"
            )
    return failed, rows


def gate(
    candidate_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    params: GateParams | None = None,
    baseline_metrics: dict[str, Any] | None = None,
    paired: dict[str, Any] | None = None,
    behavioral: dict[str, Any] | None = None,
    fairness: dict[str, Any] | None = None,
) -> GateDecision:
    """Decide whether the candidate may be promoted: the metrics, then behavior, then fairness.

    The metrics are :func:`aggregate_gate`'s. With ``behavioral`` results, a test failing on more than its
    share of cases blocks the candidate whatever its metrics; a test without cases reads unknown and is
    named in the reason. With ``fairness`` reports of both models
    (:func:`relearn.model.fairness.fairness_report`), a disparity that exceeds the champion's by more than
    the tolerance (its lower bound) blocks it too.
    """
    params = params or GateParams()
    decision = aggregate_gate(candidate_metrics, champion_metrics, params, baseline_metrics, paired)
    return _fairness_gate(_behavioral_gate(decision, behavioral, params), fairness)


def _fairness_gate(decision: GateDecision, fairness: dict[str, Any] | None) -> GateDecision:
    if not fairness:
        return decision
    from relearn.model.fairness import disparity_failures

    failed = disparity_failures(fairness["candidate"], fairness.get("champion"))
    decision.details["fairness"] = {"failed": failed, "reported": fairness["candidate"].get("reported", [])}
    if failed and decision.passed:
        why = f"group disparity beyond the champion's: {' | '.join(failed)}"
        return GateDecision(False, why, decision.details)
    return decision


def _behavioral_gate(
    decision: GateDecision, behavioral: dict[str, Any] | None, params: GateParams
) -> GateDecision:
    if behavioral is None:
        return decision
    failed, rows = behavioral_rule(behavioral, params)
    decision.details["behavioral"] = rows
    unknown = [name for name, row in rows.items() if row["passed"] is None]
    note = f"; behavioral tests without cases (unknown): {', '.join(unknown)}" if unknown else ""
    if failed:
        verdict = "passed" if decision.passed else "failed"
        why = f"behavioral tests failed: {' | '.join(failed)} (metrics gate {verdict}: {decision.reason})"
        return GateDecision(False, why + note, decision.details)
    if decision.passed:
        decision.reason += f"; {len(rows) - len(unknown)} behavioral tests passed{note}"
    return decision


def aggregate_gate(
    candidate_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    params: GateParams | None = None,
    baseline_metrics: dict[str, Any] | None = None,
    paired: dict[str, Any] | None = None,
) -> GateDecision:
    """Decide whether the candidate's metrics allow a promotion.

    With a champion: ``paired`` (the bootstrap of both models on the same holdout rows) must show the
    primary metric better by more than ``min_improvement`` at ``confidence``, the guarded metrics not worse
    than the non-inferiority margin, and no slice with enough positives may regress by more than
    ``max_slice_regression``; without ``paired`` the gate fails closed. Without a champion (first model):
    the candidate must not fall below the baseline by more than ``baseline_tolerance``; with neither, the
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

    details["champion"] = champion_metrics.get(metric)
    if paired is None:
        return GateDecision(False, "no paired comparison with the champion on the same rows", details)
    failed, rows = paired_rule(paired, params)
    details["paired"] = rows
    details["paired_rows"] = {"n": paired["n"], "positives": paired["positives"], "n_boot": paired["n_boot"]}
    if failed:
        return GateDecision(False, "; ".join(failed), details)
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
    return GateDecision(
        True,
        f"better than the champion on {paired['n']:,} holdout rows ({paired['positives']:,} fraud): "
        f"{describe(rows, params.confidence)}; no slice regression",
        details,
    )
