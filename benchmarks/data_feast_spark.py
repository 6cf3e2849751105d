"""``python -m benchmarks.data_feast_spark``: why the Spark engine does not join through Feast's Spark store.

The check behind the decision (issue 22): Feast's ``SparkOfflineStore`` (``feast[spark]``) and the file
offline store's semantics, which the pandas engine reproduces with ``merge_asof(direction="backward",
allow_exact_matches=True, tolerance=ttl)``, on a three-row case: one card with a feature row an hour
earlier and two feature rows at one instant (two transactions at the same microsecond, which the synthetic
world and real card traffic both make), and three entity rows, two of them at that instant.

Feast's point-in-time query keeps, per entity row, every feature row at the latest timestamp (a
``ROW_NUMBER`` picks the latest timestamp, then the rows are joined back on it), so a tie duplicates the
entity row; ``merge_asof`` keeps one row per entity row (the last in the source's order). It prints both
and exits 1 when they differ in row count (what this Feast version does: 6 rows for 3). Seconds, local[1].
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from datetime import UTC, datetime, timedelta

import pandas as pd


def _store(root: str):
    from feast import Entity, FeatureStore, FeatureView, Field, RepoConfig
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStoreConfig
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.types import Float32, ValueType

    source = SparkSource(
        name="users", path=f"{root}/users.parquet", file_format="parquet", timestamp_field="event_timestamp"
    )
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="uv",
        entities=[user],
        ttl=timedelta(days=7),
        schema=[Field(name="f", dtype=Float32)],
        source=source,
    )
    conf = {"spark.master": "local[1]", "spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC"}
    config = RepoConfig(
        project="check",
        registry=f"{root}/registry.db",
        provider="local",
        entity_key_serialization_version=3,
        offline_store=SparkOfflineStoreConfig(spark_conf=conf),
        online_store={"type": "sqlite", "path": f"{root}/online.db"},
    )
    store = FeatureStore(config=config)
    store.apply([user, view])
    return store


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when Feast's Spark store gives one row per entity row, as merge_asof does."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
    features = pd.DataFrame(
        {"user_id": ["u1"] * 3, "event_timestamp": [t0 - timedelta(hours=1), t0, t0], "f": [1.0, 2.0, 3.0]}
    ).astype({"event_timestamp": "datetime64[us, UTC]"})  # Spark reads µs Parquet times, not ns
    entity = pd.DataFrame(
        {"user_id": ["u1"] * 3, "event_timestamp": [t0, t0, t0 + timedelta(seconds=1)], "tx": ["a", "b", "c"]}
    ).astype({"event_timestamp": "datetime64[us, UTC]"})
    with tempfile.TemporaryDirectory() as root:
        features.to_parquet(f"{root}/users.parquet")
        feast = _store(root).get_historical_features(entity_df=entity, features=["uv:f"]).to_df()
    asof = pd.merge_asof(
        entity.sort_values("event_timestamp"),
        features.sort_values("event_timestamp", kind="stable"),
        on="event_timestamp",
        by="user_id",
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(days=7),
    )
    print("Feast SparkOfflineStore:", len(feast), "rows for", len(entity), "entity rows")
    print(feast.sort_values(["tx", "f"]).to_string(index=False))
    print("merge_asof (the file store's semantics, relearn's pandas and Spark engines):", len(asof), "rows")
    print(asof.to_string(index=False))
    return 0 if len(feast) == len(asof) else 1


if __name__ == "__main__":
    sys.exit(main())
