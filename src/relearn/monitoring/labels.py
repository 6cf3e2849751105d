"""Delayed labels (chargebacks) into the inference log, from ``POST /labels`` or a file (batch path).

``python -m relearn.monitoring.labels FILE`` loads a Parquet / JSON / CSV file with ``transaction_id``,
``chargeback_timestamp`` and optionally ``is_fraud`` (default true: a chargeback means fraud) into the
detector's database; the running detector picks them up on its next quality update.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field
from pydantic_settings import CliPositionalArg

from relearn import commands
from relearn.commands import Command, command_config
from relearn.monitoring.payloads import Rejected


def parse_labels(records: Any) -> list[tuple[str, int, float]]:
    """Validate label records → ``(transaction_id, is_fraud, label_time epoch s)``.

    Raises:
        Rejected: Not a list of objects with ``transaction_id`` and a parseable ``chargeback_timestamp``.
    """
    if not isinstance(records, list):
        raise Rejected("bad_labels", "labels must be a JSON list of objects")
    out = []
    for record in records:
        if not isinstance(record, Mapping) or not record.get("transaction_id"):
            raise Rejected("bad_labels", "each label needs a transaction_id")
        try:
            moment = pd.Timestamp(record.get("chargeback_timestamp"))
        except (ValueError, TypeError, OverflowError):  # Overflow: a UTC offset past a C int
            raise Rejected("bad_labels", f"bad chargeback_timestamp in {dict(record)}") from None
        if pd.isna(moment):
            raise Rejected("bad_labels", f"missing chargeback_timestamp in {dict(record)}")
        moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment
        out.append(
            (str(record["transaction_id"]), int(bool(record.get("is_fraud", True))), moment.timestamp())
        )
    return out


def store_labels(conn: sqlite3.Connection, labels: Iterable[tuple[str, int, float]]) -> list[float]:
    """Upsert labels; returns the join lags (label time - prediction time) of those matching a prediction."""
    rows = [(tid, fraud, when, time.time()) for tid, fraud, when in labels]
    with conn:
        conn.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)", rows)
        lags = []
        for tid, _, when, _ in rows:
            hit = conn.execute("SELECT time FROM predictions WHERE transaction_id = ?", (tid,)).fetchone()
            if hit:
                lags.append(when - hit[0])
    return lags


def read_file(path: Path) -> list[dict[str, Any]]:
    """Label records from Parquet, JSON (records) or CSV."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".json":
        frame = pd.read_json(path)
    else:
        frame = pd.read_csv(path)
    frame["chargeback_timestamp"] = pd.to_datetime(frame["chargeback_timestamp"], utc=True).astype(str)
    return frame.to_dict("records")


class LabelsCommand(Command):
    """Load delayed labels into the drift detector's database (RELEARN_DRIFT_DATA_DIR)."""

    model_config = command_config("python -m relearn.monitoring.labels", "RELEARN_LABELS_")

    file: CliPositionalArg[list[Path]] = Field(
        description="Label files: Parquet, JSON (records) or CSV with transaction_id, chargeback_timestamp"
        " and optionally is_fraud."
    )

    def cli_cmd(self) -> None:
        """Store each file's labels and print how many joined a prediction."""
        from relearn.monitoring.settings import DriftSettings
        from relearn.monitoring.store import connect

        self.start_logging()
        settings = DriftSettings()
        conn = connect(settings.data_dir / "inference-log.sqlite3", settings.sqlite_synchronous)
        for path in self.file:
            lags = store_labels(conn, parse_labels(read_file(path)))
            print(f"{path}: {len(lags)} labels joined to predictions")


def main(argv: list[str] | None = None) -> int:
    """``python -m relearn.monitoring.labels FILE...``: 0 once the files are stored, 2 without a file."""
    commands.run(LabelsCommand, argv, "labels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
