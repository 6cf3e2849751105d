"""ingest: read a time window of transactions and chargeback labels (locally: generate them)."""

from kfp.dsl import Dataset, Output

from components import relearn_component


@relearn_component
def ingest(
    start: str,
    days: int,
    users: int,
    merchants: int,
    seed: int,
    scenario: str,
    onset: str,
    source: str,
    transactions: Output[Dataset],
    labels: Output[Dataset],
    disparity: str = "",
) -> int:
    """Writes the window's transactions and labels as day-partitioned Parquet; returns the row count."""
    from relearn import steps

    summary = steps.run_step(
        steps.ingest,
        steps.IngestParams(
            start=start,
            days=days,
            users=users,
            merchants=merchants,
            seed=seed,
            scenario=scenario,
            onset=onset,
            source=source,
            disparity=disparity,
        ),
        transactions_dir=transactions.path,
        labels_dir=labels.path,
    )
    transactions.metadata.update(summary)
    return summary["rows"]
