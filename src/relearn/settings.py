"""Settings shared by every part of relearn, read from ``RELEARN_*`` environment variables.

Local mode is the default: everything lives under ``RELEARN_HOME`` (``.relearn/``) — MLflow on SQLite,
Feast with a SQLite online store and a Parquet offline store. A cluster sets the URIs instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The share of transactions the fraud team reviews: the operating point of evaluation (and so of serving's
# decision threshold), of the detector's quality metrics and of the demo. One default for all of them.
ALERT_BUDGET = 0.01


class RelearnSettings(BaseSettings):
    """Where relearn keeps its state and how it reaches MLflow and Feast."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_", extra="ignore")

    home: Path = Field(Path(".relearn"), description="Local state: MLflow DB, Feast repo, data, reports.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<home>/mlflow.db."
    )
    mlflow_artifact_root: str | None = Field(
        None, description="Artifact root for new experiments; default <home>/mlartifacts."
    )
    experiment: str = Field("relearn-fraud", description="MLflow experiment name.")
    model_name: str = Field("relearn-fraud", description="Registered model name in MLflow.")
    feast_project: str = Field("relearn", description="Feast project name.")
    feast_repo: Path | None = Field(None, description="Feast repo directory; default <home>/feature_repo.")
    feast_registry: str | None = Field(
        None,
        description="Feast registry: a file path or object-store URL (default <feast_repo>/data/registry.db),"
        " or grpc://<host>:<port> for a registry served by `feast serve_registry` (Feast's remote registry;"
        " the chart's registry server).",
    )
    feast_online_store: Literal["sqlite", "redis"] = Field("sqlite", description="Feast online store type.")
    feast_redis_connection: str = Field(
        "localhost:6379", description="Redis connection string when the online store is redis."
    )
    redis_password: str | None = Field(
        None,
        description="Redis password (RELEARN_REDIS_PASSWORD, from a Secret): added to the connection string "
        "unless it already holds one, so a ConfigMap can carry the host and a Secret the password.",
    )
    feast_offline_dir: Path | None = Field(
        None, description="Where feature tables are written as Parquet; default <feast_repo>/data."
    )

    def tracking_uri(self) -> str:
        """The MLflow tracking URI, local SQLite unless configured."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    def artifact_root(self) -> str:
        """Artifact root for experiments this process creates."""
        return self.mlflow_artifact_root or (self.home.resolve() / "mlartifacts").as_uri()

    def feature_repo(self) -> Path:
        """The Feast repo directory (feature_store.yaml lives here)."""
        return (self.feast_repo or self.home / "feature_repo").resolve()

    def offline_dir(self) -> Path:
        """The directory of the Parquet feature tables (the local offline store)."""
        return (self.feast_offline_dir or self.feature_repo() / "data").resolve()

    def drift_reference(self) -> Path:
        """Where ``make train`` copies the champion's reference sample: the local drift detector's default."""
        return self.home.resolve() / "drift" / "reference.parquet"

    def registry(self) -> str:
        """The Feast registry location."""
        return self.feast_registry or str(self.feature_repo() / "data" / "registry.db")
