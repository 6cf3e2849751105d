"""Settings of the drift detector, from ``RELEARN_DRIFT_*`` variables or the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.settings import ALERT_BUDGET, RelearnSettings

DEFAULT_LOCAL_COMMAND = ".venv/platform/bin/python -m pipelines.run"
# Measured on the generator's stream in time order (benchmarks/drift.py): each of these alone flags most
# 1,000-event windows of a stationary stream even with an hour-matched reference.
NON_STATIONARY_INPUTS: tuple[str, ...] = (
    "hour_of_day",  # calendar (the stratification key)
    "day_of_week",  # calendar
    "merchant_chargeback_rate_30d",  # grows while chargebacks accumulate (30 d window + ~7 d delay)
    "merchant_txn_count_24h",  # daily volume: shared by every event of a day
    "user_txn_count_24h",
    "log_seconds_since_last_txn",  # follows the daily volume
    "merchant_amount_mean_7d",  # 7-day rolling aggregates: slow random walks
    "user_amount_mean_7d",
    "user_amount_std_7d",
    "user_txn_count_7d",
    "user_distinct_merchants_7d",
    "country",  # travel episodes last days: consecutive events share them
)


class DriftSettings(BaseSettings):
    """The drift detector: sink of KServe's payload logger, drift tests, delayed labels, alerts.

    Every option is also an environment variable RELEARN_DRIFT_<OPTION>, e.g. RELEARN_DRIFT_PORT=8090.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_DRIFT_",
        extra="ignore",
        cli_prog_name="python -m relearn.monitoring.server",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in a pod).")
    port: int = Field(8090, ge=0, le=65535, description="Port to bind.")
    data_dir: Path = Field(Path(".relearn/drift"), description="Volume for the inference log and reports.")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL", description="SQLite synchronous mode: FULL survives power loss, NORMAL a process crash."
    )
    commit_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Extra group-commit wait: a batch is what queued up during the previous commit (fsync) "
        "plus what arrives within this wait.",
    )
    max_batch: int = Field(5000, ge=1, description="Most events per commit.")
    role: Literal["all", "ingest"] = Field(
        "all",
        description="all: the one detector that monitors (windows, labels, alerts, endpoints); ingest: a "
        "stateless sink replica appending to shared_log_url (scale these out; the monitor relays).",
    )
    shared_log_url: str = Field(
        "",
        description="PostgreSQL URL (libpq, e.g. postgresql://relearn@postgres:5432/mlflow; password from "
        "PGPASSWORD) of the log the ingest replicas share. Role ingest: where events go; role all: relayed "
        "into the local log. Empty: one detector, no replicas.",
    )
    shard: str = Field(
        "", description="An ingest replica's shard name (default: HOSTNAME + a random suffix)."
    )
    shared_log_max_events: int = Field(
        2_000_000,
        ge=1000,
        description="Role ingest: most events the shared log may hold before the monitor relays them "
        "(~1-2 GB at b1); past it the replicas refuse events with 503 (the payload logger drops and counts, "
        "or blocks and retries) instead of filling PostgreSQL's disk while the monitor is down.",
    )
    validate_bodies: bool = Field(
        True,
        description="Check each body before the answer (4xx with the reason for bodies that do not match "
        "the model's features). Off: raw bytes are stored unchecked and the monitor counts unreadable ones "
        "as rejected.",
    )
    # Reference sample.
    reference_path: Path | None = Field(
        None,
        description="Local Parquet reference (MODEL_INPUTS + score). Default, when no MLflow URI is set: "
        "<RELEARN_HOME>/drift/reference.parquet, the champion's sample `make train` copies there.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow server (http://...) to follow the champion's reference from; also read from "
        "MLFLOW_TRACKING_URI. This environment's mlflow-skinny cannot open a sqlite:// registry.",
    )
    model_name: str = Field("relearn-fraud", description="Registered model whose champion is monitored.")
    model_alias: str = Field("champion", description="Alias whose reference is used.")
    reference_poll_s: float = Field(60.0, gt=0, description="How often the alias is checked for a change.")
    stable_version: str | None = Field(
        None,
        description="Model version of the stable track (the responses' model_version): its pairs are "
        "stable traffic, any other version's canary, whatever their ce-endpoint says (a KServe canary "
        "revision started by a patch logs with the stable's settings). Default: the version of the champion "
        "the reference was loaded from (a response from an unknown version makes the alias be checked "
        "again within seconds, so a promotion is followed); a set value stays fixed, so set it only for "
        "a reference file. With a reference file and no stable_version, tracks come from the headers "
        "alone.",
    )
    # Tests.
    window_size: int = Field(1000, ge=50, description="Events per window (count-based windows).")
    window_seconds: float | None = Field(None, gt=0, description="Time-based windows (ce-time) instead.")
    p_val: float = Field(
        0.01, gt=0, lt=1, description="Family-wise significance of a window (<= 1 false alarm / 100 windows)."
    )
    correction: Literal["bonferroni", "fdr"] = Field("bonferroni", description="Multiple-testing correction.")
    exclude_features: list[str] = Field(
        list(NON_STATIONARY_INPUTS),
        description="Inputs left out of the verdict (still tested and shown in the report): calendar "
        "features, the chargeback rate that grows as chargebacks accumulate, and rolling 24 h / 7 d / 30 d "
        "entity aggregates and user-persistent state (country), whose values are shared by the consecutive "
        "events of a window (daily volume, travel episodes), so a window is no i.i.d. sample and KS/Chi2 "
        "p-values come out far too small on a stationary stream.",
    )
    stratify_by: str | None = Field(
        "hour_of_day",
        description="Compare each window with a reference subsample with the window's mix of this input.",
    )
    reference_ratio: float = Field(
        8.0, gt=0, description="Most reference rows per window row in the matched reference subsample."
    )
    shadow_service: str | None = Field(None, description="ce-inferenceservicename of the shadow service.")
    key_by_request_id: bool = Field(
        False,
        description="Key rows whose request names no transaction_id by the request id (ce-id; <ce-id>/<row> "
        "in a batch), so labels join the predictions of clients that call the predictor directly with the "
        "transaction id as request id. Off: such rows take no labels (the transformer passes the ids to "
        "the predictor, whose events carry them).",
    )
    # Labels and quality.
    alert_budget: float = Field(
        ALERT_BUDGET, gt=0, lt=1, description="Share of transactions the fraud team reviews."
    )
    quality_window: int = Field(5000, ge=100, description="Labelled predictions in the rolling quality.")
    label_maturity_s: float = Field(
        0.0, ge=0, description="Predictions older than (newest label time - this) count as labelled."
    )
    quality_p_val: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="One-sided significance of a quality drop: recall at budget of the rolling window "
        "below min_recall_ratio x the baseline's (reference sample with is_fraud, else the first labelled "
        "window after a (re)load), z-test of two binomial proportions with the baseline's overdispersion.",
    )
    min_recall_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Tolerated margin: a drop is recall at budget significantly below this share of the "
        "baseline's (the stationary stream's recall itself wanders with the fraud mix).",
    )
    quality_persistence: int = Field(
        3, ge=1, description="Consecutive label updates with a significant drop before it is an incident."
    )
    quality_min_positives: int = Field(
        10,
        ge=1,
        description="Fewest frauds in the rolling window (and a label baseline) to test recall, prevalence.",
    )
    min_recall: float = Field(
        0.0, ge=0, le=1, description="Optional hard floor (off at 0): recall at budget below it is a drop."
    )
    min_pr_auc: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Optional hard floor (off at 0; noisy over a few dozen frauds): PR-AUC below it "
        "is a drop.",
    )
    # Alerts and retraining.
    webhook_url: str | None = Field(None, description="Where drift / quality-drop CloudEvents are posted.")
    cooldown_s: float = Field(3600.0, ge=0, description="After a trigger, further incidents are suppressed.")
    trigger_mode: Literal["off", "local", "cluster"] = Field("off", description="What an incident starts.")
    local_command: str = Field(DEFAULT_LOCAL_COMMAND, description="Local-mode retraining command.")
    kfp_host: str | None = Field(None, description="KFP API endpoint (cluster mode).")
    kfp_package: str = Field(
        "/opt/relearn/pipelines/relearn-train.yaml",
        description="Compiled pipeline (cluster mode); the drift image compiles it at build.",
    )
    # Triggers besides drift and quality (relearn.monitoring.triggers), through the same cool-down.
    schedule_interval_s: float | None = Field(
        None,
        gt=0,
        description="Retrain at least this often (seconds since the last trigger); off when unset. Local "
        "mode: the monitor's own clock; cluster mode: a KFP recurring run the detector creates.",
    )
    schedule_runner: Literal["detector", "kfp"] = Field(
        "detector",
        description="Who keeps the schedule in cluster mode: the detector's own clock (default: each due "
        "schedule is an incident, so it shares the cool-down, a data bug's page and the trigger metric, and "
        "starts one KFP run) or a KFP recurring run the detector creates (visible in the Kubeflow UI, but "
        "KFP fires it regardless of the cool-down and of a page, and it is not counted).",
    )
    volume_labels: int | None = Field(
        None,
        ge=1,
        description="Retrain once this many new labelled predictions (matured, live traffic) have come "
        "since the last trigger; off when unset.",
    )
    recalibrate_command: str | None = Field(
        None,
        description="Local-mode command a label-shift incident starts (e.g. .venv/platform/bin/python -m "
        "relearn.model.recalibrate --inference-log ...); unset: the incident is posted, nothing started.",
    )
    recalibrate_package: str = Field(
        "/opt/relearn/pipelines/relearn-recalibrate.yaml",
        description="Compiled recalibration pipeline a label-shift incident runs (cluster mode; the drift "
        "image compiles it at build).",
    )
    service_url: str | None = Field(
        None,
        description="This detector's in-cluster URL, which the recalibration step reads labelled rows from "
        "(cluster mode; the chart sets it). Unset: a label-shift incident is posted, nothing started.",
    )
    # Training/serving skew (relearn.monitoring.skew): off unless both are set.
    skew_lake_dir: Path | None = Field(
        None,
        description="Lake root with transactions/ and labels/ (day-partitioned Parquet; in the cluster a "
        "mounted volume of the lake the pipeline ingests from) the served vectors are recomputed from.",
    )
    skew_interval_seconds: float | None = Field(None, gt=0, description="How often the skew is checked.")
    skew_sample: int = Field(2000, ge=1, description="Newest served rows compared per skew check.")
    skew_track: Literal["stable", "canary", "shadow", "all"] = Field(
        "stable", description="Track whose served requests the skew check samples."
    )
    log_max_age_s: float = Field(
        30 * 86400.0, gt=0, description="Events (request and response bodies) older than this are deleted."
    )
    log_max_bytes: int = Field(
        16 * 2**30,
        gt=0,
        description="Above this the oldest events are deleted (16 GiB: the chart's 20 Gi volume, with room "
        "for SQLite's write-ahead log and the reports).",
    )
    predictions_max_age_s: float = Field(
        180 * 86400.0,
        gt=0,
        description="Predictions and labels older than this are deleted (longer than the card schemes' 120 "
        "days for a chargeback, which joins its prediction).",
    )
    retention_interval_s: float = Field(300.0, gt=0, description="How often retention runs.")
    pending_ttl_s: float = Field(
        300.0, gt=0, description="A request whose response has not come by then is dropped (counted)."
    )
    reports: bool = Field(True, description="Write an HTML report per window under <data_dir>/reports.")
    poll_s: float = Field(0.2, gt=0, description="How often the monitor reads new events from the log.")
    log_level: str = Field("INFO", description="Log level.")

    @model_validator(mode="after")
    def _triggers_possible(self) -> DriftSettings:
        """Refuse trigger settings that cannot work, naming the setting.

        A schedule shorter than the cool-down would always be suppressed until the cool-down ends (the
        interval would silently be the cool-down); a KFP recurring run takes at least 60 s.
        """
        interval = self.schedule_interval_s
        if interval is not None and interval < self.cooldown_s:
            raise ValueError(
                f"schedule_interval_s ({interval:g}) must be at least cooldown_s ({self.cooldown_s:g}): "
                "a schedule inside the cool-down would always be suppressed"
            )
        if self.role == "ingest" and not self.shared_log_url:
            raise ValueError("role ingest needs shared_log_url: an ingest replica appends to the shared log")
        kfp_schedule = self.trigger_mode == "cluster" and self.schedule_runner == "kfp"
        if interval is not None and kfp_schedule and interval < 60:
            raise ValueError(f"schedule_interval_s ({interval:g}) must be >= 60 for a KFP recurring run")
        return self

    def reference_file(self) -> Path | None:
        """The reference file: ``reference_path``, else (no MLflow URI) the one ``make train`` wrote.

        None: the champion's reference comes from the MLflow registry (and follows the alias).
        """
        if self.reference_path is not None:
            return self.reference_path
        if self.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return None
        return RelearnSettings().drift_reference()
