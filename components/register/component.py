"""register: an MLflow model version with signature, lineage tags and a drift reference sample."""

from kfp.dsl import Artifact, Dataset, Input, Model

from components import relearn_component


@relearn_component
def register(
    model: Input[Model],
    training_set: Input[Dataset],
    evaluation: Input[Artifact],
    mlflow_run_id: str,
    start: str,
    days: int,
    git_sha: str,
    pipeline_run_id: str,
) -> str:
    """Registers the model (alias ``challenger``; also ``champion`` when none exists); returns its version."""
    from relearn import steps

    return steps.run_step(
        steps.register,
        model.path,
        training_set.path,
        evaluation.path,
        run_id=mlflow_run_id,
        lineage={
            "data_window": f"{start}+{days}d",
            "git_sha": git_sha,
            "pipeline_run_id": pipeline_run_id,
        },
    )
