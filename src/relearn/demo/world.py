"""The demo's simulated world: history for the first champion, a live stream to replay, chargebacks.

One generator run covers history and live days (a scenario only changes rows after its onset, so the
history is the same as without drift). It is written as the day-partitioned Parquet "data lake" the
training pipeline ingests (``source``), and the live part becomes a replay plan: the served card holders'
transactions in time order, each with the entity feature rows as of its time (what a streaming feature
pipeline keeps in the online store) and its ground truth, plus the chargebacks in arrival order.
Everything is cached under a key of the world's settings, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from relearn.data import io
from relearn.data.generator import GeneratorConfig, generate
from relearn.data.schema import REQUEST_FIELDS
from relearn.demo.settings import DemoSettings

START = datetime(2026, 1, 1, tzinfo=UTC)
WORLD_FIELDS = (
    "scenario", "seed", "users", "merchants", "history_days", "live_days", "onset_day",
    "chargeback_median_days", "sample",
)  # fmt: skip


@dataclass(frozen=True)
class World:
    """The cached world: where the data lake is and the live replay plan."""

    key: str
    source: Path  # the data lake the pipeline ingests (day-partitioned Parquet)
    stream: pd.DataFrame  # served transactions in time order: request fields, is_fraud
    labels: pd.DataFrame  # chargebacks of served transactions: transaction_id, chargeback_timestamp
    feed: pd.DataFrame  # the live transactions that are not scored, in time order: request fields
    chargebacks: pd.DataFrame  # every fraud chargeback received live: transaction_id, merchant_id, received
    history_end: datetime
    onset: datetime
    end: datetime

    def wall_per_day(self, settings: DemoSettings) -> float:
        """Wall-clock seconds the replay takes for one stream day (its requests at ``settings.rate``)."""
        return len(self.stream) / settings.live_days / settings.rate


# The modules of relearn.data whose code decides what the generator simulates.
SIMULATION = (
    "generator", "generator_config", "world_params", "frames", "rows", "scenarios", "cardholders", "schema",
)  # fmt: skip


def cache_key(spec: dict, *code: Path) -> str:
    """A short hash of ``spec`` and the source files whose change invalidates a cached result."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for path in sorted(code):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def world_key(settings: DemoSettings) -> str:
    """What decides the world's content: the settings and the code that simulates it."""
    data = Path(__file__).resolve().parents[1] / "data"
    code = [*(data / f"{name}.py" for name in SIMULATION), Path(__file__)]
    return cache_key({f: getattr(settings, f) for f in WORLD_FIELDS}, *code)


def generator_config(settings: DemoSettings) -> GeneratorConfig:
    """History plus the live days (rounded up to whole days), drift from the onset on."""
    days = settings.history_days + int(np.ceil(settings.live_days))
    return GeneratorConfig(
        start=START,
        days=days,
        n_users=settings.users,
        n_merchants=settings.merchants,
        seed=settings.seed,
        scenario=settings.scenario,
        onset=START + timedelta(days=settings.history_days + settings.onset_day),
        chargeback_median_days=settings.chargeback_median_days,
        chargeback_sigma=0.5,
        chargeback_max_days=max(10.0, 4 * settings.chargeback_median_days),
    )


def served(n: int, share: float, seed: int) -> np.ndarray:
    """Which of ``n`` live transactions go through the endpoint: a fixed random share of them.

    A share of transactions, not of card holders: the served traffic is then a sample of the same
    population the champion was trained on, so the drift tests compare like with like.
    """
    return np.random.default_rng([seed, 0xDE30]).random(n) < share


def live_chargebacks(
    transactions: pd.DataFrame, labels: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """Fraud chargebacks received in ``[start, end)`` with their transaction's merchant, in arrival order."""
    fraud = labels[labels["is_fraud"].fillna(False).astype(bool)]
    received = fraud["chargeback_timestamp"]
    fraud = fraud[(received >= pd.Timestamp(start)) & (received < pd.Timestamp(end))]
    merchants = transactions.drop_duplicates("transaction_id").set_index("transaction_id")["merchant_id"]
    out = pd.DataFrame(
        {
            "transaction_id": fraud["transaction_id"].to_numpy(),
            "merchant_id": merchants.reindex(fraud["transaction_id"]).to_numpy(),
            "received_timestamp": fraud["chargeback_timestamp"].reset_index(drop=True),
        }
    )
    return out.dropna().sort_values("received_timestamp", kind="stable").reset_index(drop=True)


def build(settings: DemoSettings) -> World:
    """The world for ``settings``, from the cache when it is there."""
    config = generator_config(settings)
    key = world_key(settings)
    root = (settings.home / "worlds" / key).resolve()
    history_end = START + timedelta(days=settings.history_days)
    end = history_end + timedelta(days=settings.live_days)
    done = root / "stream.parquet"
    if not done.exists():
        data = generate(config)
        io.write_partitioned(data.transactions, root / "source", "transactions")
        io.write_partitioned(data.labels, root / "source", "labels")
        tx = data.transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        times = tx["event_timestamp"]
        live = tx[(times >= pd.Timestamp(history_end)) & (times < pd.Timestamp(end))]
        scored = served(len(live), settings.sample, settings.seed)
        stream = live[scored].reset_index(drop=True)
        live[~scored][list(REQUEST_FIELDS)].to_parquet(root / "feed.parquet", index=False)
        labels = data.labels[data.labels["transaction_id"].isin(set(stream["transaction_id"]))]
        labels = labels.sort_values("chargeback_timestamp", kind="stable").reset_index(drop=True)
        labels.to_parquet(root / "labels.parquet", index=False)
        live_chargebacks(tx, data.labels, history_end, end).to_parquet(root / "chargebacks.parquet")
        stream.to_parquet(root / "stream.tmp", index=False)
        (root / "stream.tmp").rename(done)  # last: its presence marks a complete cache
    return World(
        key=key,
        source=root / "source",
        stream=pd.read_parquet(done),
        labels=pd.read_parquet(root / "labels.parquet"),
        feed=pd.read_parquet(root / "feed.parquet"),
        chargebacks=pd.read_parquet(root / "chargebacks.parquet"),
        history_end=history_end,
        onset=config.onset_time,
        end=end,
    )
