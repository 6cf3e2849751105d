"""train: a PyTorch model with categorical embeddings, tracked in MLflow."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import relearn_component


@relearn_component
def train(
    training_set: Input[Dataset],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    workers: int,
    distributed_backend: str,
    image: str,
    train_mode: str,
    replay_fraction: float,
    scratch_every: int,
    params_from: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("mlflow_run_id", str)]):
    """Trains with early stopping on validation PR-AUC; returns the MLflow run that tracks it.

    ``workers`` > 1 trains data-parallel: torchrun processes here, or a PyTorchJob of ``image`` pods in a
    cluster (``distributed_backend``: auto, local or pytorchjob; see relearn.model.distributed).
    ``train_mode`` auto/warm fine-tunes the champion (relearn.model.warm); scratch trains anew.
    ``params_from`` "best": the newest tuning study's hyper-parameters (relearn.model.tuning).
    """
    from collections import namedtuple

    from relearn import steps

    result = steps.run_step(
        steps.train,
        training_set.path,
        model.path,
        steps.TrainStepParams(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            workers=workers,
            distributed_backend=distributed_backend,
            image=image,
            train_mode=train_mode,
            replay_fraction=replay_fraction,
            scratch_every=scratch_every,
            params_from=params_from,
        ),
    )
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    model.metadata.update({"mlflow_run_id": result["run_id"], "framework": "pytorch"})
    return namedtuple("TrainOutputs", ["mlflow_run_id"])(result["run_id"])
