"""The training pipeline's evaluate and gate steps (plain functions over files, like :mod:`relearn.steps`).

``evaluate`` scores the time-based holdout and writes everything the gate and a reviewer read: the metrics
with the baseline and the champion, their paired bootstrap, the behavioral suite, fairness per card-holder
group and the permutation importance of the inputs; ``gate`` decides from that file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from relearn.settings import RelearnSettings
from relearn.training import splits, tracking


def evaluate(
    training_set_path: str,
    model_dir: str,
    report_path: str,
    evaluation_path: str,
    *,
    run_id: str,
    alert_budget: float,
    val_fraction: float,
    test_fraction: float,
    settings: RelearnSettings | None = None,
) -> dict[str, float]:
    """Scores the time-based holdout and compares the model with a baseline and the current champion."""
    from relearn.model import behavioral, explain, fairness, net, registry, report, stats
    from relearn.model import evaluate as ev
    from relearn.model.gate import GateParams

    settings = settings or RelearnSettings()
    train_df, _, test_df = splits(training_set_path, val_fraction, test_fraction)
    model, preprocessor, _ = net.load_model(model_dir)
    scores = net.score(model, preprocessor, test_df)
    candidate = ev.evaluate(scores, test_df, alert_budget)
    baseline_scores = ev.baseline(train_df, test_df)
    baseline = ev.evaluate(baseline_scores, test_df, alert_budget)
    champion, champion_scores, champion_version = None, None, None
    loaded = registry.load_champion(settings)
    if loaded is not None:
        champion_model, champion_version = loaded
        champion_scores = champion_model.predict(test_df)["score"].to_numpy()
        champion = ev.evaluate(champion_scores, test_df, alert_budget)
    gate_params = GateParams()
    paired = None  # both models resampled on the same rows: what the gate reads
    if champion_scores is not None:
        n_boot, seed = gate_params.n_boot, gate_params.seed
        paired = ev.paired(scores, champion_scores, test_df, alert_budget, n_boot, seed)
    comparison = ev.compare(candidate, baseline, champion)
    # The declared behavioral suite on cases drawn from the same holdout, at the candidate's threshold.
    behavior = behavioral.run_suite(
        lambda frame: net.score(model, preprocessor, frame),
        test_df,
        candidate["threshold"],
        seed=gate_params.seed,
    )
    # Per card-holder group at each model's threshold (paired: same rows, same resamples), and what each
    # input is worth to the business metrics (shuffled one at a time).
    fair = {"candidate": _fairness(test_df, scores, candidate, gate_params)}
    if champion_scores is not None:
        fair["champion"] = _fairness(test_df, champion_scores, champion, gate_params)
    importance = explain.permutation_importance(
        model, preprocessor, test_df, alert_budget, repeats=5, seed=gate_params.seed
    )
    plots_dir = Path(evaluation_path).parent / "plots"
    by_model = {"candidate": (scores, candidate), "baseline": (baseline_scores, baseline)}
    if champion is not None:
        by_model[f"champion (v{champion_version})"] = (champion_scores, champion)
    labels = test_df["label"].to_numpy()
    plots = report.make_plots(
        plots_dir,
        {name: (model_scores, labels) for name, (model_scores, _) in by_model.items()},
        {name: model_metrics for name, (_, model_metrics) in by_model.items()},
        alert_budget=alert_budget,
    )
    figure = explain.plot_importance(importance)
    figure.savefig(plots_dir / "importance.png", dpi=110, bbox_inches="tight")
    plots["Permutation importance: recall at budget lost per shuffled input"] = plots_dir / "importance.png"
    html = report.write_report(
        plots_dir,
        candidate,
        comparison,
        plots,
        paired=paired,
        confidence=gate_params.confidence,
        behavioral=behavior,
        sections=[fairness.html_section(fair["candidate"])],
    )
    shutil.copyfile(html, report_path)
    headline = {
        "pr_auc": candidate["pr_auc"],
        "recall_at_budget": candidate["recall_at_budget"],
        "precision_at_budget": candidate["precision_at_budget"],
        "fraud_amount_caught": candidate["fraud_amount_caught"],
        "baseline_pr_auc": baseline["pr_auc"],
        "baseline_recall_at_budget": baseline["recall_at_budget"],
    }
    evaluation = {
        "candidate": candidate,
        "baseline": baseline,
        "champion": champion,
        "champion_version": champion_version,
        "paired": paired,
        "behavioral": behavior,
        "fairness": fair,
        "permutation_importance": importance,
        "comparison": comparison,
        "threshold": candidate["threshold"],
        "versus_baseline": versus_baseline(candidate, baseline),
        "alert_budget": alert_budget,
        "headline": headline,
    }
    Path(evaluation_path).write_text(json.dumps(evaluation, indent=2, default=float))
    mlflow = tracking(settings)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in headline.items() if v is not None})
        if paired is not None:  # the differences with the champion and their bounds, as run metrics
            rows = stats.summary(paired, gate_params.confidence)
            mlflow.log_metrics(
                {
                    f"vs_champion_{m}_{k}": row[k]
                    for m, row in rows.items()
                    for k in ("difference", "lower", "upper")
                    if row[k] is not None
                }
            )
        rates = {name: test["failure_rate"] for name, test in behavior["tests"].items()}
        mlflow.log_metrics({f"behavioral_{n}_failure_rate": r for n, r in rates.items() if r is not None})
        mlflow.set_tags({f"behavioral.{n}.cases": t["cases"] for n, t in behavior["tests"].items()})
        explain.log_importance(importance)
        mlflow.log_metrics(
            {
                f"fairness_{attribute}_{d}": row[d]["value"]
                for attribute, row in fair["candidate"]["attributes"].items()
                for d in fairness.DIFFERENCES
                if row[d]["value"] is not None
            }
        )
        mlflow.log_artifact(report_path, artifact_path="evaluation")
        mlflow.log_artifacts(str(plots_dir), artifact_path="evaluation/plots")
    return headline


def _fairness(frame: Any, scores: Any, metrics: dict[str, Any], params: Any) -> dict[str, Any]:
    """:func:`relearn.model.fairness.fairness_report` of one model, seeded like the gate's bootstrap."""
    from relearn.model import fairness

    opts = {"n_boot": params.n_boot, "seed": params.seed, "confidence": params.confidence}
    return fairness.fairness_report(frame, scores, frame["label"], metrics["threshold"], **opts)


def versus_baseline(candidate: dict[str, Any], baseline: dict[str, Any]) -> str:
    """One sentence: does the model beat the baseline, and if not, by how much it falls short."""
    gaps = {m: candidate[m] - baseline[m] for m in ("pr_auc", "recall_at_budget")}
    numbers = ", ".join(f"{m} {candidate[m]:.3f} vs {baseline[m]:.3f}" for m in gaps)
    if all(gap >= 0 for gap in gaps.values()):
        return f"beats the baseline ({numbers})"
    behind = " and ".join(m for m, gap in gaps.items() if gap < 0)
    return f"does not beat the baseline on {behind} ({numbers})"


# -------------------------------------------------------------------------------------------- register
def gate(
    evaluation_path: str,
    decision_path: str,
    *,
    model_version: str,
    min_improvement: float,
    max_slice_regression: float,
    max_behavioral_failure_rate: float = 0.05,
    warm_min_improvement: float | None = None,
    settings: RelearnSettings | None = None,
) -> tuple[bool, str]:
    """Decides whether the challenger should replace the champion, and writes the decision as Markdown.

    The model version is tagged with it too (``gate.*``: verdict, each difference and its bounds). A
    challenger that fine-tuned the champion (its ``train_mode`` tag is warm) must clear
    ``warm_min_improvement`` instead of ``min_improvement`` when one is given: it is the champion plus the
    newest data, whose value a holdout of a hundred frauds cannot show (``benchmarks.drift_response``).
    """
    from relearn.model import registry
    from relearn.model.gate import GateParams
    from relearn.model.gate import gate as decide
    from relearn.model.warm import MODE_TAG

    settings = settings or RelearnSettings()
    evaluation = json.loads(Path(evaluation_path).read_text())
    base = GateParams(
        min_improvement=min_improvement,
        max_slice_regression=max_slice_regression,
        max_behavioral_failure_rate=max_behavioral_failure_rate,
        warm_min_improvement=warm_min_improvement,
    )
    params = base.for_candidate(registry.get_version_tags(settings, model_version).get(MODE_TAG) == "warm")
    warm = params is not base  # the fine-tuned champion's rule applied
    decision = decide(
        evaluation["candidate"],
        evaluation["champion"],
        params,
        baseline_metrics=evaluation["baseline"],
        paired=evaluation.get("paired"),
        behavioral=evaluation.get("behavioral"),
        fairness=evaluation.get("fairness"),
    )
    verdict = "PASSED" if decision.passed else "FAILED"
    champion = evaluation["champion_version"] or f"none before this run (version {model_version} became it)"
    lines = [f"# Gate: {verdict}\n", f"- challenger: version {model_version}", f"- champion: {champion}"]
    lines.append(f"- reason: {decision.reason}")
    if warm:
        lines.append(
            f"- fine-tuned champion: required gain {params.min_improvement:+.4f} (warm_min_improvement)"
        )
    if decision.details.get("paired"):
        bound = f"{100 * params.confidence:g} % bound"
        header = f"| metric | challenger | champion | difference | lower {bound} | upper {bound} | role |"
        lines += ["", header]
        lines.append("|---|---|---|---|---|---|---|")
        for name, row in decision.details["paired"].items():
            cells = [_cell(row[k]) for k in ("candidate", "champion", "difference", "lower", "upper")]
            lines.append(f"| {name} | {' | '.join(cells)} | {row['role']} |")
    if decision.details.get("behavioral"):
        lines += ["", "| behavioral test | cases | failure rate | max | verdict |", "|---|---|---|---|---|"]
        for name, row in decision.details["behavioral"].items():
            rate = "–" if row["failure_rate"] is None else f"{row['failure_rate']:.1%}"
            state = {True: "passed", False: "FAILED", None: "unknown (no cases)"}[row["passed"]]
            lines.append(f"| {name} | {row['cases']} | {rate} | {row['max_failure_rate']:.0%} | {state} |")
    Path(decision_path).write_text("\n".join(lines) + "\n")
    registry.tag_version(
        settings, model_version, decision.tags() | {"gate.min_improvement": params.min_improvement}
    )
    rule = f" (fine-tuned champion: gain > {params.min_improvement:+.2f} asked)" if warm else ""
    return decision.passed, f"{verdict}: {decision.reason}{rule}"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"
