"""The Feast feature repo: configuration, definitions, apply, materialize, training set, online fetch.

Local mode: Parquet offline store (Feast's ``file`` store) under ``settings.offline_dir()``, SQLite online
store and file registry under ``settings.feature_repo()``. A cluster sets ``RELEARN_FEAST_ONLINE_STORE=redis``
(and ``RELEARN_FEAST_REDIS_CONNECTION``), which needs the ``redis`` client package (``feast[redis]``), and
``RELEARN_FEAST_REGISTRY=grpc://<host>:<port>``: Feast's remote registry, served by ``feast serve_registry``
(the chart's registry server), so pipeline pods in another namespace and the transformers share it.

:func:`write_repo` also writes ``feature_store.yaml`` and a small definitions module into the repo, so the
``feast`` CLI works there too (``feast -c <feature_repo> apply``, ``... feature-views list``).
Nothing here has import-time side effects; every path comes from :class:`~relearn.settings.RelearnSettings`.
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.types import Float64, Int64, String

from relearn.data.schema import REQUEST_FIELDS
from relearn.features.registry import SnapshotFeatureStore
from relearn.features.spec import (
    FEATURE_SERVICE,
    LABEL,
    MERCHANT_FEATURES,
    MERCHANT_VIEW,
    USER_FEATURES,
    USER_VIEW,
)
from relearn.features.transforms import entity_feature_tables, model_inputs
from relearn.features.windows import HISTORY_HORIZON
from relearn.settings import RelearnSettings

USER_TABLE = "user_features.parquet"
MERCHANT_TABLE = "merchant_features.parquet"
DEFINITIONS_MODULE = "repo_definitions.py"
# RELEARN_FEAST_REGISTRY=grpc://<host>:<port>: Feast's remote registry (a `feast serve_registry` server).
REMOTE_REGISTRY_SCHEME = "grpc://"
# A local file registry is replaced atomically, so readers never parse a half-written one (registry_file.py).
FILE_REGISTRY_STORE = "relearn.features.registry_file.AtomicFileRegistryStore"


# A user (or merchant) not seen for longer than the TTL is cold again: the point-in-time join returns no
# row and serving falls back to ENTITY_DEFAULTS. Same horizon as transforms.HISTORY_HORIZON, which makes
# the training row of a returning user look like the cold-start row serving would see.
ENTITY_TTL = HISTORY_HORIZON

# Feast types of the entity features, as entity_feature_tables writes them (int64 counts, float64, str).
FEATURE_TYPES = {
    "user_txn_count_1h": Int64,
    "user_txn_count_24h": Int64,
    "user_txn_count_7d": Int64,
    "user_amount_mean_7d": Float64,
    "user_amount_std_7d": Float64,
    "user_distinct_merchants_7d": Int64,
    "user_last_txn_unix": Float64,  # NaN/null when there is no previous transaction
    "user_last_country": String,
    "user_last_device": String,
    "merchant_txn_count_24h": Int64,
    "merchant_amount_mean_7d": Float64,
    "merchant_chargeback_rate_30d": Float64,
}

# Columns of the training set besides MODEL_INPUTS (merchant_category is one of them already).
TRAINING_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "event_timestamp",
    "user_id",
    "merchant_id",
    "amount",
    "is_fraud",  # ground truth of the synthetic world, for analysis only
    "fraud_pattern",
)


def definitions(settings: RelearnSettings) -> list[Any]:
    """The Feast objects of relearn: entities, Parquet sources, the two views and the feature service."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="Card holder.")
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    offline = settings.offline_dir()
    user_source = FileSource(
        name="user_features_source", path=str(offline / USER_TABLE), timestamp_field="event_timestamp"
    )
    merchant_source = FileSource(
        name="merchant_features_source", path=str(offline / MERCHANT_TABLE), timestamp_field="event_timestamp"
    )
    user_schema = [
        Field(name="user_id", dtype=String),
        *(Field(name=n, dtype=FEATURE_TYPES[n]) for n in USER_FEATURES),
    ]
    merchant_schema = [
        Field(name="merchant_id", dtype=String),
        *(Field(name=n, dtype=FEATURE_TYPES[n]) for n in MERCHANT_FEATURES),
    ]
    user_view = FeatureView(
        name=USER_VIEW,
        entities=[user],
        ttl=ENTITY_TTL,
        schema=user_schema,
        source=user_source,
        description="User velocity and habits over [t - w, t).",
    )
    merchant_view = FeatureView(
        name=MERCHANT_VIEW,
        entities=[merchant],
        ttl=ENTITY_TTL,
        schema=merchant_schema,
        source=merchant_source,
        description="Merchant volume and chargebacks received before t.",
    )
    service = FeatureService(name=FEATURE_SERVICE, features=[user_view, merchant_view])
    return [user, merchant, user_source, merchant_source, user_view, merchant_view, service]


def registry_config(settings: RelearnSettings) -> str | dict[str, Any]:
    """The ``registry`` entry of ``feature_store.yaml``: a file registry's path, or Feast's remote registry.

    ``grpc://<host>:<port>`` becomes ``{registry_type: remote, path: <host>:<port>}``, the gRPC target that
    ``feast.infra.registry.remote.RemoteRegistry`` dials (insecure channel; no TLS in the cluster network).
    A local path gets the atomic file store :data:`FILE_REGISTRY_STORE`.
    """
    registry = settings.registry()
    if registry.startswith(REMOTE_REGISTRY_SCHEME):
        return {"registry_type": "remote", "path": registry.removeprefix(REMOTE_REGISTRY_SCHEME)}
    if "://" not in registry:  # a local path; object-store URLs keep Feast's store for their scheme
        return {"registry_type": "file", "registry_store_type": FILE_REGISTRY_STORE, "path": registry}
    return registry


def store_config(settings: RelearnSettings) -> dict[str, Any]:
    """The content of ``feature_store.yaml`` as a dict."""
    repo = settings.feature_repo()
    if settings.feast_online_store == "redis":
        connection = settings.feast_redis_connection
        if settings.redis_password and "password=" not in connection:
            connection += f",password={settings.redis_password}"
        online: dict[str, Any] = {"type": "redis", "connection_string": connection}
    else:
        online = {"type": "sqlite", "path": str(repo / "data" / "online.db")}
    return {
        "project": settings.feast_project,
        "provider": "local",
        "registry": registry_config(settings),
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,  # the only version Feast 0.67 recommends (v2 is deprecated)
    }


def repo_config(settings: RelearnSettings) -> RepoConfig:
    """The Feast RepoConfig for these settings (redis needs the ``redis`` package to validate)."""
    return RepoConfig(repo_path=settings.feature_repo(), **store_config(settings))


_DEFINITIONS_SOURCE = '''"""Feast definitions for the `feast` CLI (written by relearn.features.store)."""

from relearn.features.store import definitions
from relearn.settings import RelearnSettings

for _obj in definitions(RelearnSettings.model_validate_json({settings!r})):
    globals()[type(_obj).__name__.lower() + "_" + _obj.name] = _obj  # feast collects module attributes
'''


def write_repo(settings: RelearnSettings) -> Path:
    """Write ``feature_store.yaml`` and the CLI definitions module into the feature repo; return its path."""
    repo = settings.feature_repo()
    (repo / "data").mkdir(parents=True, exist_ok=True)
    settings.offline_dir().mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(store_config(settings), sort_keys=False))
    # Absolute paths baked in: the CLI runs with the repo as working directory, where .relearn/ is not.
    # Only what definitions() needs: no connection strings in a Python file.
    resolved = RelearnSettings(
        home=settings.home.resolve(), feast_repo=repo, feast_offline_dir=settings.offline_dir()
    ).model_dump_json(include={"home", "feast_repo", "feast_offline_dir"})
    (repo / DEFINITIONS_MODULE).write_text(_DEFINITIONS_SOURCE.format(settings=resolved))
    return repo


def get_store(settings: RelearnSettings) -> FeatureStore:
    """A FeatureStore on the repo of these settings (writes the repo files first)."""
    repo = write_repo(settings)
    return SnapshotFeatureStore(repo_path=str(repo), config=repo_config(settings))


def apply(store: FeatureStore, settings: RelearnSettings) -> None:
    """Register the definitions in the registry and create online tables: what ``feast apply`` does."""
    store.apply(definitions(settings))


def write_feature_tables(
    transactions: pd.DataFrame, labels: pd.DataFrame, settings: RelearnSettings
) -> tuple[Path, Path]:
    """Compute the entity tables and write them as the Parquet files the FileSources read.

    Returns:
        The paths of the user and merchant tables.
    """
    users, merchants = entity_feature_tables(transactions, labels)
    offline = settings.offline_dir()
    offline.mkdir(parents=True, exist_ok=True)
    paths = offline / USER_TABLE, offline / MERCHANT_TABLE
    users.to_parquet(paths[0], index=False)
    merchants.to_parquet(paths[1], index=False)
    return paths


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def materialize(store: FeatureStore, end: datetime, start: datetime | None = None) -> None:
    """Load the latest feature row per entity in ``[start, end]`` into the online store.

    ``start`` defaults to ``end - ENTITY_TTL``: entities not seen within the TTL would be cold offline, so
    they are not loaded (rows already online from earlier runs stay; the online store has no TTL on read).
    We do not use ``materialize_incremental``: on its first run it starts at wall-clock ``now - ttl``,
    which skips historical (e.g. simulated) data entirely. Pick ``end`` after the last event: the row
    that includes the last transaction is stamped 1 µs after it.
    """
    end = _utc(end)
    store.materialize(start_date=_utc(start) if start else end - ENTITY_TTL, end_date=end)


def _entity_keys(frame: pd.DataFrame) -> pd.DataFrame:
    keys = pd.DataFrame(index=frame.index)
    for key in ("user_id", "merchant_id"):
        keys[key] = frame[key].astype(object).where(frame[key].notna(), "").astype(str)
    return keys


def _pandas_point_in_time(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time semantics with ``pd.merge_asof``, on the views' own sources.

    Per view and entity row: the latest feature row with ``entity_ts - ttl <= feature_ts <= entity_ts``,
    else nulls. Equivalent to the file store's ``get_historical_features`` (a test checks it), which joins
    every entity row with every row of its entity before filtering and so grows quadratically.
    """
    frame = entity_df.assign(event_timestamp=pd.to_datetime(entity_df["event_timestamp"], utc=True))
    frame["event_timestamp"] = frame["event_timestamp"].dt.as_unit("us")
    order = np.argsort(frame["event_timestamp"].to_numpy(), kind="stable")
    frame = frame.iloc[order]
    for projection in store.get_feature_service(FEATURE_SERVICE).feature_view_projections:
        view = store.get_feature_view(projection.name)
        key = view.entity_columns[0].name
        names = [f.name for f in projection.features]
        source = view.batch_source
        table = pd.read_parquet(source.path, columns=[key, source.timestamp_field, *names])
        table = table.rename(columns={source.timestamp_field: "event_timestamp"})
        table["event_timestamp"] = pd.to_datetime(table["event_timestamp"], utc=True).dt.as_unit("us")
        frame = pd.merge_asof(
            frame,
            table.sort_values("event_timestamp", kind="stable"),
            on="event_timestamp",
            by=key,
            direction="backward",
            allow_exact_matches=True,
            tolerance=pd.Timedelta(view.ttl) if view.ttl else None,
        )
    return frame.iloc[np.argsort(order)].set_axis(entity_df.index)


def historical_features(
    store: FeatureStore, entity_df: pd.DataFrame, engine: Literal["pandas", "feast"] = "pandas"
) -> pd.DataFrame:
    """Join the feature service's features to ``entity_df`` as of each row's ``event_timestamp``.

    Args:
        store: The feature store (definitions applied, feature tables written).
        entity_df: ``user_id``, ``merchant_id``, ``event_timestamp`` and any pass-through columns.
        engine: ``"pandas"`` (default; a ``merge_asof`` with Feast's semantics, ~10 s for 1M rows) or
            ``"feast"`` (``get_historical_features`` on the file store, the reference). The latter takes
            minutes for 10k rows (it builds a per-entity cross product through dask) and, in Feast 0.67,
            loses entity rows (returned here as all-null) whose entity has rows but none in
            ``[t - ttl, t]``, and all but one of the rows sharing a user (or merchant) and timestamp.

    Returns:
        ``entity_df`` (same index and order) plus ``USER_FEATURES`` and ``MERCHANT_FEATURES``; null where
        the entity had no row within the TTL.
    """
    keys = _entity_keys(entity_df).assign(
        event_timestamp=pd.to_datetime(entity_df["event_timestamp"], utc=True)
    )
    if engine == "pandas":
        features = _pandas_point_in_time(store, keys)
    elif engine == "feast":
        keys["relearn_row"] = np.arange(len(keys))
        service = store.get_feature_service(FEATURE_SERVICE)
        joined = store.get_historical_features(entity_df=keys, features=service).to_df()
        # Feast reorders rows; put them back by our row number.
        features = joined.set_index("relearn_row").reindex(np.arange(len(keys))).set_axis(entity_df.index)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    names = [*USER_FEATURES, *MERCHANT_FEATURES]
    return pd.concat([entity_df.drop(columns=[n for n in names if n in entity_df]), features[names]], axis=1)


def training_set(
    store: FeatureStore,
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    label_cutoff: datetime,
    engine: Literal["pandas", "feast"] = "pandas",
) -> pd.DataFrame:
    """Point-in-time correct training rows: features as known at each transaction, labels as of the cut-off.

    Args:
        store: A store whose feature tables cover ``transactions``.
        transactions: Rows following ``TRANSACTION_SCHEMA``.
        labels: Chargebacks following ``LABEL_SCHEMA``.
        label_cutoff: Only chargebacks received by then count; later ones are unknown at training time.
        engine: Point-in-time join engine, see :func:`historical_features`.

    Returns:
        One row per transaction, sorted by ``event_timestamp`` (stable), index 0..n-1: ``TRAINING_COLUMNS``
        (those present), then ``MODEL_INPUTS``, then ``LABEL`` (int64: 1 iff an ``is_fraud`` chargeback with
        ``chargeback_timestamp <= label_cutoff`` exists for the transaction).
    """
    tx = transactions.copy()
    tx["event_timestamp"] = pd.to_datetime(tx["event_timestamp"], utc=True)
    tx = tx.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    frame = historical_features(store, tx, engine=engine)

    known = labels[labels["is_fraud"].fillna(False).astype(bool)]
    known = known[pd.to_datetime(known["chargeback_timestamp"], utc=True) <= pd.Timestamp(_utc(label_cutoff))]
    out = pd.concat([tx[[c for c in TRAINING_COLUMNS if c in tx]], model_inputs(frame)], axis=1)
    out[LABEL] = tx["transaction_id"].isin(known["transaction_id"]).astype(np.int64)
    return out


def online_features(store: FeatureStore, requests: pd.DataFrame) -> pd.DataFrame:
    """The requests joined with their entities' online features, in one ``get_online_features`` call.

    Unknown entities come back with null features (see :func:`~relearn.features.transforms.cold_start_mask`).
    On the request path (typically one row) pandas' per-column overhead dominates, so the keys are read as
    lists and the result is built in one DataFrame construction instead of a selection plus one ``assign``
    per feature (same columns, dtypes and index).
    """
    names = [*USER_FEATURES, *MERCHANT_FEATURES]
    fields = [c for c in REQUEST_FIELDS if c in requests]
    if requests.empty:
        return requests[fields].assign(**{n: pd.Series(dtype=object) for n in names})
    response = store.get_online_features(
        features=_feature_service(store),
        entity_rows={
            "user_id": _key_list(requests, "user_id"),
            "merchant_id": _key_list(requests, "merchant_id"),
        },
    ).to_dict()
    columns: dict[str, Any] = {c: requests[c].array for c in fields}
    columns.update((n, response[n]) for n in names)
    return pd.DataFrame(columns, index=requests.index, copy=False)


def _key_list(frame: pd.DataFrame, key: str) -> list[str]:
    """The entity keys of ``key`` as strings, null as ``""`` (what :func:`_entity_keys` gives, as a list)."""
    return ["" if _is_null(v) else str(v) for v in frame[key].tolist()]


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


_SERVICES: weakref.WeakKeyDictionary[FeatureStore, FeatureService] = weakref.WeakKeyDictionary()


def _feature_service(store: FeatureStore) -> FeatureService:
    """The model's FeatureService, read from the registry once per store (a lookup parses the registry)."""
    if store not in _SERVICES:
        _SERVICES[store] = store.get_feature_service(FEATURE_SERVICE)
    return _SERVICES[store]


def online_model_inputs(store: FeatureStore, requests: pd.DataFrame) -> pd.DataFrame:
    """``MODEL_INPUTS`` for a batch of raw requests (``REQUEST_FIELDS``), on ``requests.index``."""
    return model_inputs(online_features(store, requests))
