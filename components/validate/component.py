"""validate: schema and expectations; a violating batch stops the run with a readable report."""

from kfp.dsl import Dataset, Input, Markdown, Output

from components import relearn_component


@relearn_component
def validate(
    start: str,
    days: int,
    transactions: Input[Dataset],
    report: Output[Markdown],
    data_engine: str = "",
) -> bool:
    """Checks the batch, writes a Markdown report, and fails the task (exit 1) when a check fails.

    ``data_engine``: pandas, spark (the same checks as Spark aggregates over the lake), auto, or empty
    for the release's (RELEARN_SPARK_ENGINE).
    """
    from relearn import steps

    steps.run_step(
        steps.validate, transactions.path, report.path, start=start, days=days, data_engine=data_engine
    )
    return True
