"""What the generator simulates (:class:`GeneratorConfig`) and what it returns (:class:`GeneratedData`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relearn.data import cardholders, scenarios
from relearn.data.schema import (
    MERCHANT_CATEGORIES,
)


class GeneratorConfig(BaseModel):
    """What to simulate. Same config (seed included) → identical data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: datetime = Field(datetime(2024, 1, 1, tzinfo=UTC), description="First day, midnight UTC.")
    days: int = Field(28, ge=1, le=3660, description="Number of days to simulate.")
    n_users: int = Field(2_500, ge=10, description="Number of card holders.")
    n_merchants: int = Field(400, ge=len(MERCHANT_CATEGORIES), description="Number of merchants.")
    mean_daily_transactions: float = Field(2.5, gt=0, description="Average transactions per user and day.")
    seed: int = Field(0, ge=0, description="Random seed.")
    fraud_rate: float = Field(0.01, gt=0, lt=0.2, description="Target share of fraudulent transactions.")
    scenario: str = Field("none", description="Drift scenario, one of relearn.data.scenarios.SCENARIOS.")
    onset: datetime | None = Field(None, description="When the scenario starts; default mid-window.")
    chargeback_probability: float = Field(0.9, ge=0, le=1, description="Share of fraud charged back.")
    chargeback_median_days: float = Field(7.0, gt=0, description="Median chargeback delay (lognormal).")
    chargeback_sigma: float = Field(0.7, gt=0, description="Log-sd of the chargeback delay.")
    chargeback_max_days: float = Field(
        60.0, ge=1, description="Chargebacks arrive within 1 to this many days."
    )
    disparity: str = Field(
        "", description="Plant a group disparity (fairness tests): 'attribute=group', e.g. 'age_band=65+'."
    )

    @field_validator("start", "onset")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, value: str) -> str:
        if value not in scenarios.SCENARIOS:
            raise ValueError(f"unknown scenario {value!r}; choose one of {sorted(scenarios.SCENARIOS)}")
        return value

    @field_validator("disparity")
    @classmethod
    def _known_group(cls, value: str) -> str:
        cardholders.parse_disparity(value)
        return value

    @model_validator(mode="after")
    def _check_times(self) -> GeneratorConfig:
        if self.start != self.start.replace(hour=0, minute=0, second=0, microsecond=0):
            raise ValueError("start must be midnight UTC (partitions and seasonality are per UTC day)")
        if self.onset is not None and not self.start <= self.onset <= self.end:
            raise ValueError(f"onset {self.onset} is outside [{self.start}, {self.end}]")
        return self

    @property
    def end(self) -> datetime:
        """End of the window (exclusive)."""
        return self.start + timedelta(days=self.days)

    @property
    def onset_time(self) -> datetime:
        """The scenario onset, defaulting to the middle day of the window."""
        return self.onset or self.start + timedelta(days=self.days // 2)


@dataclass(frozen=True)
class GeneratedData:
    """Transactions and chargeback labels, both sorted by time, and the card holders.

    ``cardholders`` (CARDHOLDER_SCHEMA) holds attributes measured for fairness, never model inputs.
    """

    transactions: pd.DataFrame
    labels: pd.DataFrame
    config: GeneratorConfig
    cardholders: pd.DataFrame | None = None

    @property
    def onset(self) -> pd.Timestamp:
        """When the scenario started (mid-window by default; irrelevant for ``none``)."""
        return pd.Timestamp(self.config.onset_time)
