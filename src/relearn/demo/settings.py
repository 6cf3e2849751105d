"""Options of ``make demo`` / ``relearn-demo`` (environment: ``RELEARN_DEMO_<OPTION>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.data.scenarios import SCENARIOS
from relearn.settings import ALERT_BUDGET


class DemoSettings(BaseSettings):
    """Run relearn's whole loop on this machine: train, serve, drift, retrain, shadow, canary, promote.

    The world is simulated (card transactions with delayed chargebacks); a drift scenario starts part-way
    through the live stream. Every option is also an environment variable RELEARN_DEMO_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_DEMO_",
        extra="ignore",
        cli_prog_name="relearn-demo",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    # The world.
    scenario: str = Field(
        "concept_drift", description=f"Drift scenario switched on part-way: one of {sorted(SCENARIOS)}."
    )
    seed: int = Field(7, ge=0, description="Seed of the world, the training and the traffic split.")
    users: int = Field(3000, ge=50, description="Card holders in the simulated world.")
    merchants: int = Field(500, ge=20, description="Merchants in the simulated world.")
    history_days: int = Field(28, ge=7, description="Days of history the first champion is trained on.")
    live_days: float = Field(
        40.0,
        gt=0,
        description="Most days of the live stream replayed. A run stops after_decision_days after its "
        "decision (promotion, rollback or page); this bounds a run whose retraining failed its gate.",
    )
    after_decision_days: float = Field(
        3.0,
        gt=0,
        description="Days replayed after the decision (promotion, rollback or page), then the demo stops.",
    )
    onset_day: float = Field(2.0, ge=0, description="Day of the live stream the scenario starts.")
    chargeback_median_days: float = Field(1.0, gt=0, description="Median delay of a chargeback (days).")
    # The traffic.
    rate: float = Field(40.0, gt=0, description="Transactions per second sent to the gRPC endpoint.")
    sample: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of the live transactions sent through the endpoint (a random sample); all of "
        "them reach the data lake. Keeps the demo short on 2 cores while the retraining sees a realistic "
        "volume.",
    )
    # Monitoring and rollout.
    alert_budget: float = Field(
        ALERT_BUDGET, gt=0, lt=1, description="Share of transactions the fraud team reviews."
    )
    window_size: int = Field(500, ge=50, description="Events per drift-test window.")
    quality_window: int = Field(1000, ge=100, description="Labelled predictions in the rolling quality.")
    retrain_after_days: float = Field(
        4.0,
        ge=0,
        description="Stream days between the first alert and the retraining run, and between a refused "
        "retraining and its retry: the drifted data needs its chargebacks (label maturity) before a model "
        "can learn from it. The stream's clock holds while a retraining runs.",
    )
    retrain_days: int = Field(10, ge=7, description="Days of recent data the retraining run trains on.")
    max_slice_regression: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Retraining gate: largest tolerated drop of a slice's recall. A model retrained on a "
        "short recent window trades some recall on old patterns for the new one.",
    )
    label_maturity_days: float = Field(
        2.0, ge=0, description="Newest days whose chargebacks are still due (kept out of quality/training)."
    )
    analysis_interval_seconds: float = Field(5.0, gt=0, description="Rollout controller's interval.")
    analysis_window: str = Field("20s", description="Rollout controller's PromQL window.")
    min_canary_requests: int = Field(50, ge=1, description="Canary requests a window needs to count.")
    # Where and how.
    home: Path = Field(Path(".relearn/demo"), description="Demo state: world cache, MLflow, Feast, logs.")
    report: Path | None = Field(None, description="Report folder; default <home>/report.")
    drift_python: Path = Field(
        Path(".venv/drift/bin/python"), description="Python of the drift detector's environment."
    )
    prometheus: str = Field("prometheus", description="Prometheus server binary (Debian's package).")
    state: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="Streaming feature state: sqlite (embedded) or redis (a redis-server on loopback, as the "
        "chart runs it: append-only file, fsync per state_appendfsync; bootstrapped from the lake).",
    )
    state_appendfsync: Literal["always", "everysec"] = Field(
        "everysec", description="The state's Redis fsync policy (the chart's streamingState.redis value)."
    )
    redis_server: str = Field("redis-server", description="Redis server binary (Debian's package).")
    experiment: Literal["none", "ab"] = Field(
        "none",
        description="ab: the retrained challenger is A/B tested against the champion (half the cards each, "
        "sticky) instead of shadow and canary, until the stream ends; the report ends with the experiment.",
    )
    max_minutes: float = Field(30.0, gt=0, description="Stop (and report) after this long, whatever happens.")
    progress: bool = Field(True, description="Live progress line on the terminal.")
    log_level: str = Field("WARNING", description="Level of relearn's JSON logs on the terminal.")

    def report_dir(self) -> Path:
        """Where the HTML report and its plots go."""
        return (self.report or self.home / "report").resolve()
