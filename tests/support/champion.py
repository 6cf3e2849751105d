"""A registered champion in a real MLflow registry, and the prior shift a recalibration answers."""

from __future__ import annotations

import mlflow
import pandas as pd

from relearn.features.spec import MODEL_INPUTS
from relearn.model.registry import register, setup_mlflow
from relearn.settings import RelearnSettings


def register_champion(result, train_df, home) -> RelearnSettings:
    """Register a training result as version 1 (the champion) under home, with a stale threshold of 0.2."""
    settings = RelearnSettings(home=home)
    setup_mlflow(settings)
    with mlflow.start_run() as run:
        register(
            result,
            settings=settings,
            run_id=run.info.run_id,
            metrics={},
            train_sample=train_df,
            lineage={"data_window": "w", "git_sha": "abc", "pipeline_run_id": "p"},
            threshold=0.2,
        )
    return settings


def prior_shift(rest: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """A fraud campaign: every fraud five times (same inputs, so P(x | fraud) is unchanged)."""
    fraud = rest[rest["is_fraud"]]
    shifted = pd.concat([rest, *[fraud] * 4]).sample(frac=1.0, random_state=seed)
    return shifted[list(MODEL_INPUTS)].assign(label=shifted["is_fraud"].astype(int).to_numpy())
