"""Parquet storage partitioned by UTC day: ``<root>/transactions/date=YYYY-MM-DD/part-0.parquet``.

Transactions are partitioned by event time, labels by chargeback time (the day the label becomes known),
so "the labels known at time t" is a prefix of the label partitions. Writes enforce the pyarrow schema;
reads return tz-aware UTC timestamps. The card-holder table (attributes for fairness measurement) is a
snapshot, not a time series: one file, ``<root>/cardholders/part-0.parquet``, replaced on every write.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relearn.data.cardholders import CARDHOLDER_SCHEMA
from relearn.data.schema import LABEL_SCHEMA, LABELS_DIR, TRANSACTION_SCHEMA, TRANSACTIONS_DIR
from relearn.logs import progress_bar

log = logging.getLogger("relearn.data.io")

Kind = Literal["transactions", "labels"]
_LAYOUT: dict[str, tuple[str, pa.Schema, str]] = {
    "transactions": (TRANSACTIONS_DIR, TRANSACTION_SCHEMA, "event_timestamp"),
    "labels": (LABELS_DIR, LABEL_SCHEMA, "chargeback_timestamp"),
}
PART_FILE = "part-0.parquet"
CARDHOLDERS_DIR = "cardholders"
TimeLike = datetime | pd.Timestamp | str


def _utc(value: TimeLike) -> pd.Timestamp:
    """A tz-aware UTC timestamp; naive input is taken to be UTC already."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_table(df: pd.DataFrame, kind: Kind) -> pa.Table:
    """The DataFrame as a pyarrow table with exactly the schema of ``kind`` (raises on a mismatch)."""
    _, schema, _ = _LAYOUT[kind]
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise ValueError(f"{kind}: missing columns {missing}")
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def write_partitioned(
    df: pd.DataFrame, root: str | Path, kind: Kind = "transactions", progress: bool = False
) -> list[Path]:
    """Write ``df`` as one Parquet file per UTC day under ``<root>/<kind>/date=YYYY-MM-DD/``.

    An existing partition for the same day is replaced, so re-writing a day is idempotent.

    Args:
        df: Rows conforming to TRANSACTION_SCHEMA or LABEL_SCHEMA.
        root: Data root directory.
        kind: ``"transactions"`` (by event day) or ``"labels"`` (by chargeback day).
        progress: Show a tqdm bar over the days.

    Returns:
        The written files, in day order.
    """
    subdir, _, time_col = _LAYOUT[kind]
    days = pd.to_datetime(df[time_col], utc=True).dt.strftime("%Y-%m-%d")
    written = []
    groups = df.groupby(days, sort=True)
    for day, part in progress_bar(
        groups, total=groups.ngroups, desc=f"write {kind}", unit="day", disable=not progress
    ):
        table = to_table(part.sort_values(time_col, kind="stable"), kind)
        path = Path(root) / subdir / f"date={day}" / PART_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        written.append(path)
    log.info("wrote partitions", extra={"kind": kind, "rows": len(df), "partitions": len(written)})
    return written


def partitions(root: str | Path, kind: Kind = "transactions") -> dict[date, Path]:
    """The day partitions present under ``<root>/<kind>``, by date."""
    base = Path(root) / _LAYOUT[kind][0]
    found = {}
    for d in sorted(base.glob("date=*")) if base.is_dir() else []:
        try:
            found[date.fromisoformat(d.name.removeprefix("date="))] = d
        except ValueError:
            log.warning("ignoring directory that is not a day partition", extra={"path": str(d)})
    return found


def _read(root: str | Path, kind: Kind, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> pd.DataFrame:
    """Rows of ``kind`` from the partitions overlapping [lo, hi] (row-level filtering is the caller's)."""
    _, schema, time_col = _LAYOUT[kind]
    tables = [
        pq.read_table(f, schema=schema)
        for day, d in partitions(root, kind).items()
        if (lo is None or day >= lo.date()) and (hi is None or day <= hi.date())
        for f in sorted(d.glob("*.parquet"))
    ]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    df = table.to_pandas()
    df[time_col] = df[time_col].astype("datetime64[us, UTC]")
    return df


def read_transactions(
    root: str | Path, start: TimeLike | None = None, end: TimeLike | None = None
) -> pd.DataFrame:
    """Transactions with ``start <= event_timestamp < end`` (either bound optional), sorted by time.

    Args:
        root: Data root directory.
        start: Inclusive lower bound; naive values are UTC.
        end: Exclusive upper bound; naive values are UTC.

    Returns:
        A DataFrame with the TRANSACTION_SCHEMA columns (empty if nothing matches).
    """
    lo = None if start is None else _utc(start)
    hi = None if end is None else _utc(end)
    df = _read(root, "transactions", lo, hi)
    ts = df["event_timestamp"]
    keep = pd.Series(True, index=df.index)
    if lo is not None:
        keep &= ts >= lo
    if hi is not None:
        keep &= ts < hi
    return df[keep].sort_values("event_timestamp", kind="stable", ignore_index=True)


def read_labels(root: str | Path, until: TimeLike | None = None) -> pd.DataFrame:
    """Chargebacks known at ``until``: those with ``chargeback_timestamp <= until``, sorted by time.

    Args:
        root: Data root directory.
        until: Point in time the labels are known at (inclusive); None reads all.

    Returns:
        A DataFrame with the LABEL_SCHEMA columns.
    """
    hi = None if until is None else _utc(until)
    df = _read(root, "labels", None, hi)
    if hi is not None:
        df = df[df["chargeback_timestamp"] <= hi]
    return df.sort_values("chargeback_timestamp", kind="stable", ignore_index=True)


def write_cardholders(df: pd.DataFrame, root: str | Path) -> Path:
    """Write the card-holder table (CARDHOLDER_SCHEMA) to ``<root>/cardholders/``, replacing the last one."""
    missing = [c for c in CARDHOLDER_SCHEMA.names if c not in df.columns]
    if missing:
        raise ValueError(f"cardholders: missing columns {missing}")
    table = pa.Table.from_pandas(df[CARDHOLDER_SCHEMA.names], schema=CARDHOLDER_SCHEMA, preserve_index=False)
    path = Path(root) / CARDHOLDERS_DIR / PART_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    log.info("wrote card holders", extra={"rows": len(df)})
    return path


def read_cardholders(root: str | Path) -> pd.DataFrame:
    """The card-holder table under ``root``, or an empty one (CARDHOLDER_SCHEMA columns) if there is none."""
    path = Path(root) / CARDHOLDERS_DIR / PART_FILE
    table = (
        pq.read_table(path, schema=CARDHOLDER_SCHEMA) if path.is_file() else CARDHOLDER_SCHEMA.empty_table()
    )
    return table.to_pandas()


def window(start: str, days: int) -> tuple[datetime, datetime]:
    """The data window ``[start, start + days)`` in UTC."""
    begin = datetime.fromisoformat(start)
    begin = begin.replace(tzinfo=UTC) if begin.tzinfo is None else begin.astimezone(UTC)
    return begin, begin + timedelta(days=days)
