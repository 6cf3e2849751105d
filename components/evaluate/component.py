"""evaluate: time-based holdout vs a scikit-learn baseline and the current champion, with plots."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import relearn_component


@relearn_component
def evaluate(
    training_set: Input[Dataset],
    model: Input[Model],
    mlflow_run_id: str,
    alert_budget: float,
    val_fraction: float,
    test_fraction: float,
    report: Output[HTML],
    metrics: Output[Metrics],
    evaluation: Output[Artifact],
) -> None:
    """Writes the HTML report, the headline metrics, and the full evaluation (JSON) for the gate."""
    from relearn import steps
    from relearn.evaluation import evaluate as evaluate_step

    headline = steps.run_step(
        evaluate_step,
        training_set.path,
        model.path,
        report.path,
        evaluation.path,
        run_id=mlflow_run_id,
        alert_budget=alert_budget,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    for name, value in headline.items():
        metrics.log_metric(name, value)
