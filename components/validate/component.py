"""validate: schema and expectations; a violating batch stops the run with a readable report."""

from kfp.dsl import Dataset, Input, Markdown, Output

from components import relearn_component


@relearn_component
def validate(start: str, days: int, transactions: Input[Dataset], report: Output[Markdown]) -> bool:
    """Checks the batch, writes a Markdown report, and fails the task (exit 1) when a check fails."""
    from relearn import steps

    steps.run_step(steps.validate, transactions.path, report.path, start=start, days=days)
    return True
