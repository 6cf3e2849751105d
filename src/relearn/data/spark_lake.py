"""The day-partitioned Parquet lake (:mod:`relearn.data.io`'s layout) read and written by Spark.

Before Spark reads anything, :func:`lake_problems` checks what the Parquet footers and directory names
tell (missing day partitions, a partition whose schema changed) and, with one aggregate, rows outside the
window: a bad lake stops the step with a readable report, never with a JVM stack trace from deep inside a
job. Results are written by Spark as part files, then joined into the single Parquet file the rest of
relearn (Feast's FileSource, the train step) reads, one row group at a time (bounded memory).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)
from pyspark.sql import types as T  # noqa: N812

from relearn.data import io
from relearn.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA

_SCHEMAS = {
    "transactions": (TRANSACTION_SCHEMA, "event_timestamp"),
    "labels": (LABEL_SCHEMA, "chargeback_timestamp"),
}
_SPARK_TYPES = {
    pa.string(): T.StringType(),
    pa.float64(): T.DoubleType(),
    pa.bool_(): T.BooleanType(),
    pa.timestamp("us", tz="UTC"): T.TimestampType(),
}
ORDER = "_order"  # position of a row in the input: breaks ties of one entity's events at one instant
SHOWN = 10  # problems of one kind listed in a report; the rest are counted


def spark_schema(schema: pa.Schema) -> T.StructType:
    """The lake's pyarrow schema as Spark's (all nullable: the contract, not the reader, judges nulls)."""
    return T.StructType([T.StructField(f.name, _SPARK_TYPES[f.type], True) for f in schema])


def _files(root: str | Path, kind: io.Kind) -> dict:
    return {day: sorted(d.glob("*.parquet")) for day, d in io.partitions(root, kind).items()}


def _listed(lines: list[str]) -> list[str]:
    return lines[:SHOWN] + ([f"... and {len(lines) - SHOWN} more"] if len(lines) > SHOWN else [])


def schema_problems_by_day(root: str | Path, kind: io.Kind) -> dict[date, list[str]]:
    """Partitions whose files miss a column or hold one with another type (read from the footers only)."""
    expected, _ = _SCHEMAS[kind]
    problems: dict[date, list[str]] = {}
    for day, files in _files(root, kind).items():
        for path in files:
            try:
                found = pq.read_schema(path)
            except (OSError, pa.ArrowInvalid) as exc:
                problems.setdefault(day, []).append(
                    f"{kind} {day}: {path.name} is not readable Parquet ({exc})"
                )
                continue
            missing = [f.name for f in expected if f.name not in found.names]
            changed = [
                f"{f.name} is {found.field(f.name).type}, expected {f.type}"
                for f in expected
                if f.name in found.names and not found.field(f.name).type.equals(f.type)
            ]
            if missing or changed:
                what = ([f"missing columns {missing}"] if missing else []) + changed
                problems.setdefault(day, []).append(f"{kind} {day}: schema changed: {'; '.join(what)}")
    return problems


def schema_problems(root: str | Path, kind: io.Kind) -> list[str]:
    """:func:`schema_problems_by_day`, in day order."""
    return [p for day_problems in schema_problems_by_day(root, kind).values() for p in day_problems]


def lake_columns(root: str | Path, kind: io.Kind) -> set[str]:
    """The columns some file of the lake holds (footers only); the schema's if the lake is empty."""
    files = [f for day_files in _files(root, kind).values() for f in day_files]
    if not files:
        return set(_SCHEMAS[kind][0].names)
    found: set[str] = set()
    for path in files:
        try:
            found.update(pq.read_schema(path).names)
        except (OSError, pa.ArrowInvalid):
            continue  # reported by schema_problems_by_day
    return found


def missing_days(root: str | Path, begin: datetime, end: datetime) -> list[str]:
    """Days of ``[begin, end)`` without a transactions partition (or with no file in it)."""
    present = {day for day, files in _files(root, "transactions").items() if files}
    days, day = [], begin.date()
    while datetime(day.year, day.month, day.day, tzinfo=begin.tzinfo) < end:
        if day not in present:
            days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def read_lake(
    spark: SparkSession,
    root: str | Path,
    kind: io.Kind,
    columns: list[str] | None = None,
    skip_days: Collection[date] = (),
) -> DataFrame:
    """All rows of ``kind`` under ``root`` with the lake's schema (or ``columns`` of it only).

    All columns of transactions come with :data:`ORDER`. ``skip_days``: partitions left out (validation
    reads around those whose schema changed).

    ``ORDER`` follows each day file's row order (one file is one Spark partition at this size: day files
    are tens of MB), which is the pandas engine's tie order among one entity's events at one instant.
    """
    schema = spark_schema(_SCHEMAS[kind][0])
    if columns:
        schema = T.StructType([f for f in schema.fields if f.name in columns])
    paths = [str(p) for day, files in _files(root, kind).items() if day not in skip_days for p in files]
    if not paths:
        return spark.createDataFrame([], schema)
    frame = spark.read.schema(schema).parquet(*paths)
    if kind == "transactions" and not columns:
        frame = frame.withColumn(ORDER, F.monotonically_increasing_id())
    return frame


def window_problems(tx: DataFrame, begin: datetime, end: datetime) -> list[str]:
    """Rows whose event time is outside ``[begin, end)`` (one aggregate over the lake)."""
    ts = F.col("event_timestamp")
    outside = ts.isNotNull() & ((ts < F.lit(begin)) | (ts >= F.lit(end)))
    row = tx.agg(
        F.sum(outside.cast("long")).alias("n"),
        F.min(F.when(outside, ts)).alias("first"),
        F.max(F.when(outside, ts)).alias("last"),
    ).first()
    if not row or not row["n"]:
        return []
    return [
        f"{row['n']:,} transactions outside the window [{begin.isoformat()}, {end.isoformat()}): "
        f"from {row['first']} to {row['last']} (UTC)"
    ]


def lake_problems(
    spark: SparkSession, transactions: str, labels: str, begin: datetime, end: datetime
) -> list[str]:
    """Everything wrong with the lake for the window, worded for the step's report (empty if none)."""
    tx_schema = schema_problems(transactions, "transactions")
    problems = tx_schema + schema_problems(labels, "labels")
    days = missing_days(transactions, begin, end)
    if days:
        problems.append(f"{len(days)} day partition(s) of transactions missing: {', '.join(_listed(days))}")
    if not any("event_timestamp" in p for p in tx_schema):  # only the time column is read here
        times = read_lake(spark, transactions, "transactions", columns=["event_timestamp"])
        problems += window_problems(times, begin, end)
    return problems


def report(problems: list[str], transactions: str, labels: str) -> str:
    """The markdown report of a bad lake."""
    lines = [
        f"The lake cannot be used ({len(problems)} problem(s)):",
        "",
        *(f"- {p}" for p in _listed(problems)),
        "",
        f"transactions: {transactions}",
        f"labels: {labels}",
    ]
    return "\n".join(lines)


def write_parquet_file(frame: DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as ONE Parquet file at ``path`` (rows in the frame's order), via Spark part files."""
    path = Path(path)
    parts = path.with_name(path.name + ".parts")
    frame.write.mode("overwrite").parquet(str(parts))
    files = sorted(parts.glob("part-*.parquet"))
    schema = pq.read_schema(files[0]).remove_metadata() if files else None
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    os.replace(tmp, path)
    shutil.rmtree(parts)
    return path
