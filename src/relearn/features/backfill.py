"""Bootstrap and backfill of the streaming state from the data lake, so serving starts exact.

``python -m relearn.features.backfill --transactions DIR --labels DIR --until TIME`` adds every transaction
and chargeback a window ending at ``--until`` can see. The state is a set of events keyed by
``transaction_id``, so this is idempotent and can run while the transformers serve: it never replaces
what the stream added, it only fills in what is missing (the pipeline's features step runs it each time).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from relearn import commands
from relearn.commands import Command, command_config
from relearn.features.state import Event, OnlineState, StateSettings, open_state
from relearn.features.transforms import epoch_us
from relearn.features.windows import HORIZON_US, MERCHANT_RETENTION_US

log = logging.getLogger(__name__)


def _text(values: pd.Series) -> np.ndarray:
    return values.astype(object).where(values.notna(), "").astype(str).to_numpy()


def lake_events(
    transactions: pd.DataFrame, labels: pd.DataFrame, until: datetime
) -> tuple[list[Event], list[tuple[str, str, int]]]:
    """The transactions and chargebacks (received before ``until``) a window ending at ``until`` can see.

    Chargebacks count as the pandas engine counts them: fraud only, once per transaction, attributed to
    the merchant of the charged-back transaction.
    """
    end = int(epoch_us(pd.Series([until]))[0])
    tx = transactions[transactions["user_id"].notna() & transactions["merchant_id"].notna()]
    tx = tx[tx["event_timestamp"].notna()]
    times = epoch_us(tx["event_timestamp"])
    keep = (times < end) & (times >= end - max(HORIZON_US, MERCHANT_RETENTION_US))
    recent, times = tx[keep], times[keep]
    amounts = pd.to_numeric(recent["amount"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    device = recent["device_id"] if "device_id" in recent else pd.Series("", index=recent.index)
    columns = zip(
        _text(recent["transaction_id"]),
        times.tolist(),
        _text(recent["user_id"]),
        _text(recent["merchant_id"]),
        amounts.tolist(),
        _text(recent["country"]),
        _text(device),
        strict=True,
    )
    events = [
        Event(tid, t, user, merchant, None if amount != amount else amount, country, dev)
        for tid, t, user, merchant, amount, country, dev in columns
    ]
    events.sort(key=lambda e: e.time_us)

    fraud = labels[labels["is_fraud"].fillna(False).astype(bool)]
    fraud = fraud.sort_values("chargeback_timestamp").drop_duplicates("transaction_id")
    received = epoch_us(fraud["chargeback_timestamp"])
    merchant_of = pd.Series(_text(tx["merchant_id"]), index=_text(tx["transaction_id"]))
    merchant_of = merchant_of[~merchant_of.index.duplicated()]
    merchants = merchant_of.reindex(_text(fraud["transaction_id"])).to_numpy()
    window = (received < end) & (received >= end - MERCHANT_RETENTION_US) & pd.notna(merchants)
    ids = _text(fraud["transaction_id"])[window]
    chargebacks = [
        (str(m), str(tid), int(t)) for m, tid, t in zip(merchants[window], ids, received[window], strict=True)
    ]
    return events, chargebacks


def bootstrap(
    state: OnlineState,
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    until: datetime,
    batch: int = 2000,
    progress: bool = False,
) -> dict[str, Any]:
    """Add the lake's events up to ``until`` to the state (idempotent); returns counts."""
    events, chargebacks = lake_events(transactions, labels, until)
    bar = tqdm(total=len(events), unit="txn", desc="bootstrap", disable=not progress)
    for start in range(0, len(events), batch):
        state.add(events[start : start + batch])
        bar.update(min(batch, len(events) - start))
    bar.close()
    added = state.backend.chargebacks(chargebacks) if chargebacks else 0
    summary = {"transactions": len(events), "chargebacks": len(chargebacks), "chargebacks_new": added}
    log.info("streaming state bootstrapped", extra={**summary, "until": str(until)})
    return summary


def bootstrap_configured(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    until: datetime,
    batch: int = 250,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`bootstrap` into the configured state (``RELEARN_STATE_*``), opened and closed here.

    Small write transactions by default: serving's update-and-read waits for the state's lock at most
    ``feature_timeout_seconds``, and the bootstrap may run while the transformers serve.
    """
    state = open_state(StateSettings())
    try:
        return bootstrap(state, transactions, labels, until, batch, progress=progress)
    finally:
        state.close()


def _lake_root(path: Path, kind: str) -> Path:
    """The lake root for ``kind``: ``path`` itself (holding ``<kind>/``) or the parent of ``path/<kind>``."""
    return path.parent if path.name == kind and not (path / kind).is_dir() else path


_LAKE = "The lake (holding {0}/) or its {0}/ folder."


class BackfillCommand(Command):
    """Bootstrap the configured state (RELEARN_STATE_*) from the day-partitioned Parquet lake."""

    model_config = command_config("python -m relearn.features.backfill", "RELEARN_BACKFILL_")

    transactions: Path = Field(description=_LAKE.format("transactions"))
    labels: Path = Field(description=_LAKE.format("labels"))
    until: datetime = Field(description="ISO-8601 time (UTC if naive): events before it are added.")
    batch: int = Field(2000, ge=1, description="Events per round trip.")

    def cli_cmd(self) -> None:
        """Add what the state lacks; exit 2 when the lake holds no transactions before ``until``."""
        from relearn.data import io

        self.start_logging()
        until = pd.Timestamp(self.until)
        until = until.tz_localize("UTC") if until.tzinfo is None else until
        transactions = io.read_transactions(_lake_root(self.transactions, "transactions"), end=until)
        if transactions.empty:  # a wrong folder or time must not pass as "bootstrapped, 0 events"
            print(
                f"backfill: no transactions before {until.isoformat()} under {self.transactions}",
                file=sys.stderr,
            )
            raise SystemExit(2)
        labels = io.read_labels(_lake_root(self.labels, "labels"))
        summary = bootstrap_configured(
            transactions, labels, until.to_pydatetime(), self.batch, progress=sys.stderr.isatty()
        )
        print(summary)


def main(argv: list[str] | None = None) -> int:
    """``python -m relearn.features.backfill``: 0 once the state holds the lake's events."""
    commands.run(BackfillCommand, argv, "backfill")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
