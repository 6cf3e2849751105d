"""Generated worlds as point-in-time training rows, every label known: the ML benchmarks' common input."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd


def labelled_rows(days: int, users: int, seed: int, scenario: str, onset: datetime) -> pd.DataFrame:
    """The training rows (entity features joined point in time) of a ``days``-long world of ``users``.

    Labels are read 60 days after the world ends, so every chargeback has arrived: the benchmarks measure
    the models, not the label delay.
    """
    from relearn.data.generator import GeneratorConfig, generate
    from relearn.features import store as fstore
    from relearn.settings import RelearnSettings

    config = GeneratorConfig(days=days, n_users=users, seed=seed, scenario=scenario)
    data = generate(config.model_copy(update={"onset": onset}))
    with tempfile.TemporaryDirectory() as home:
        settings = RelearnSettings(home=Path(home))
        fstore.write_feature_tables(data.transactions, data.labels, settings)
        store = fstore.get_store(settings)
        fstore.apply(store, settings)
        return fstore.training_set(store, data.transactions, data.labels, config.end + pd.Timedelta(days=60))


def world_start() -> datetime:
    """The first instant of every generated world (the generator's default start)."""
    from relearn.data.generator import GeneratorConfig

    return GeneratorConfig().start
