"""``relearn-generate`` / ``python -m relearn.data``: write synthetic transactions and chargebacks."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.data.generator import GeneratorConfig, generate
from relearn.data.io import write_cardholders, write_partitioned
from relearn.data.scenarios import SCENARIOS, resolve_onset
from relearn.logs import configure_logging
from relearn.settings import RelearnSettings

ScenarioName = Literal[tuple(SCENARIOS)]  # type: ignore[valid-type]


class GenerateSettings(BaseSettings):
    """Generate synthetic card transactions, fraud and delayed chargebacks as Parquet partitioned by day.

    Every option can also be set as an environment variable RELEARN_GEN_<OPTION>, e.g. RELEARN_GEN_USERS.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_GEN_",
        cli_prog_name="relearn-generate",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    out: Path | None = Field(None, description="Output directory (default: <RELEARN_HOME>/data).")
    # The training pipeline's default window (pipelines/train.py), so `make train ARGS="--source <out>"`
    # finds the events of a lake written with the defaults.
    start: datetime = Field(
        datetime(2026, 1, 1, tzinfo=UTC), description="First day, midnight UTC (ISO date)."
    )
    days: int = Field(35, ge=1, description="Number of days to simulate.")
    users: int = Field(
        2_500, ge=10, description="Number of card holders (~2.5 transactions per user and day)."
    )
    merchants: int = Field(400, ge=13, description="Number of merchants.")
    seed: int = Field(0, ge=0, description="Random seed; the same options give identical data.")
    scenario: ScenarioName = Field(
        "none", description="Drift scenario. " + " ".join(f"{k}: {v}" for k, v in SCENARIOS.items())
    )
    onset: str | None = Field(
        None,
        description='Scenario onset: ISO datetime, "day N" (N days after start) or a window fraction '
        "such as 0.5 (default: the middle day).",
    )
    fraud_rate: float = Field(0.01, gt=0, lt=0.2, description="Target share of fraudulent transactions.")
    progress: bool = Field(True, description="Show progress bars.")

    def cli_cmd(self) -> None:
        """Run the generator with these settings."""
        run(self)


def run(settings: GenerateSettings) -> dict[str, object]:
    """Generate the data, write it under ``settings.out`` and print a summary.

    Returns:
        The summary (rows, fraud rate, labels, days, output path, ...).
    """
    start = settings.start if settings.start.tzinfo else settings.start.replace(tzinfo=UTC)
    config = GeneratorConfig(
        start=start,
        days=settings.days,
        n_users=settings.users,
        n_merchants=settings.merchants,
        seed=settings.seed,
        scenario=settings.scenario,
        onset=resolve_onset(settings.onset, start, settings.days),
        fraud_rate=settings.fraud_rate,
    )
    out = (settings.out or RelearnSettings().home / "data").resolve()
    t0 = time.perf_counter()
    data = generate(config)
    seconds = time.perf_counter() - t0
    tx_files = write_partitioned(data.transactions, out, "transactions", progress=settings.progress)
    label_files = write_partitioned(data.labels, out, "labels", progress=settings.progress)
    write_cardholders(data.cardholders, out)  # <out>/cardholders: the fairness report's groups (not inputs)
    summary: dict[str, object] = {
        "rows": len(data.transactions),
        "fraud_rate": round(float(data.transactions["is_fraud"].mean()), 5),
        "labels": len(data.labels),
        "days": config.days,
        "transaction_partitions": len(tx_files),
        "label_partitions": len(label_files),
        "scenario": config.scenario,
        "onset": config.onset_time.isoformat() if config.scenario != "none" else None,
        "seed": config.seed,
        "generate_seconds": round(seconds, 2),
        "out": str(out),
    }
    width = max(map(len, summary))
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``relearn-generate``; parses ``argv`` (default: the command line)."""
    configure_logging()
    CliApp.run(GenerateSettings, cli_args=argv)


if __name__ == "__main__":
    main()
