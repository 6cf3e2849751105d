"""features: apply the Feast repo, materialize, and build the point-in-time training set."""

from kfp.dsl import Dataset, Input, Output

from components import relearn_component


@relearn_component
def features(
    start: str,
    days: int,
    label_maturity_days: int,
    join_engine: str,
    transactions: Input[Dataset],
    labels: Input[Dataset],
    training_set: Output[Dataset],
    data_engine: str = "",
) -> int:
    """Writes the training set (model inputs + label, one row per transaction); returns its row count."""
    from relearn import steps

    summary = steps.run_step(
        steps.build_features,
        transactions.path,
        labels.path,
        training_set.path,
        start=start,
        days=days,
        label_maturity_days=label_maturity_days,
        join_engine=join_engine,
        data_engine=data_engine,
    )
    training_set.metadata.update(summary)
    return summary["rows"]
