"""The validate step's expectations over the lake on Spark: the same checks, verdicts and report as pandas.

Exact, not sampled: a bad 100 M-row batch may hide its fault in a few rows (a duplicated id, one day's
unit change), which a bounded sample can miss. Each statistic is a Spark aggregate over every row; the
verdicts (thresholds, wording) are :mod:`relearn.data.expectations`', the record contract runs as
:func:`relearn.data.contract.frame_masks` on Arrow batches, so the one definition of each check serves
both engines and a batch gets the same Markdown report on either (``tests/features/test_spark_validate.py``).

The passes over the data: one aggregate (rows, times, window, null shares, medians per currency), the
daily counts, the contract (Python workers), the duplicates of each unique column (a shuffle). Medians are
exact (``percentile``: memory grows with the distinct amounts of one currency, not with rows). A partition
whose schema changed is named in ``schema:types`` and left out of the other checks, which still run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)
from pyspark.sql import types as T  # noqa: N812

from relearn.data import contract, spark_lake
from relearn.data import expectations as ex
from relearn.data.spark_lake import ORDER
from relearn.data.spark_session import readable_errors
from relearn.data.validate import Checks, ValidationReport, run_checks, utc

log = logging.getLogger("relearn.data.validate_spark")

US = "_us"  # event time as epoch µs (null when the time is)
EXAMPLES = 3  # as many examples per check as the pandas engine shows
_CONTRACT_OUT = T.StructType(
    [
        T.StructField("field", T.StringType()),
        T.StructField("broken", T.LongType()),
        T.StructField(US, T.LongType()),
        T.StructField(ORDER, T.LongType()),
        T.StructField("message", T.StringType()),
    ]
)


def _stamp(us: int | None) -> pd.Timestamp:
    """Epoch µs as pandas shows a UTC time (``NaT`` for none): the words of the pandas report."""
    return pd.NaT if us is None else pd.Timestamp(us, unit="us", tz="UTC")


def _before(key: tuple[bool, int | None, int]) -> Column:
    """Rows ahead of ``key`` in the pandas engine's order: by time, nulls last, ties in lake order."""
    null, us, order = key
    if null:
        return F.col(US).isNotNull() | (F.col(ORDER) < order)
    return (F.col(US) < us) | ((F.col(US) == us) & (F.col(ORDER) < order))


def _first_rows(frame: DataFrame, group: str, n: int = EXAMPLES) -> DataFrame:
    """The first ``n`` rows of each ``group`` in the pandas engine's order."""
    from pyspark.sql import Window

    order = Window.partitionBy(group).orderBy(F.col(US).asc_nulls_last(), ORDER)
    return frame.withColumn("_n", F.row_number().over(order)).where(F.col("_n") <= n).drop("_n")


def _contract(tx: DataFrame, fields: list[str]) -> tuple[dict[str, int], dict[str, list]]:
    """Rows breaking each field's rule and the first examples (key, message), on Arrow batches."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            batch = batch.reset_index(drop=True)
            rows = []
            order = np.lexsort((batch[ORDER], batch[US].fillna(0), batch[US].isna()))  # pandas' order
            for field, mask in contract.frame_masks(batch).items():
                rows.append((field, int(mask.sum()), None, None, None))
                first = [int(i) for i in order[mask[order]][:EXAMPLES]]
                rule = next(r for r in contract.TRANSACTION if r.field == field)
                for i, text in zip(first, contract.frame_messages(batch, rule, first), strict=True):
                    us = batch[US].iloc[i]
                    message = text.removeprefix(f"row {i}: ")  # the row number is the lake's, found later
                    rows.append(
                        (field, 0, None if pd.isna(us) else int(us), int(batch[ORDER].iloc[i]), message)
                    )
            yield pd.DataFrame(rows, columns=_CONTRACT_OUT.names).astype({"broken": "int64"})

    out = tx.select(*fields, US, ORDER).mapInPandas(check, _CONTRACT_OUT).cache()
    broken = {r["field"]: int(r["n"]) for r in out.groupBy("field").agg(F.sum("broken").alias("n")).collect()}
    examples: dict[str, list] = {}
    for r in _first_rows(out.where(F.col("message").isNotNull()), "field").collect():
        examples.setdefault(r["field"], []).append(((r[US] is None, r[US], r[ORDER]), r["message"]))
    out.unpersist()
    return broken, {f: sorted(e, key=lambda x: (x[0][0], x[0][1] or 0, x[0][2])) for f, e in examples.items()}


def _positions(tx: DataFrame, keys: list[tuple]) -> list[int]:
    """Each key's row number in the pandas engine's frame (one aggregate for all of them)."""
    if not keys:
        return []
    row = tx.agg(*(F.sum(_before(k).cast("long")).alias(f"p{i}") for i, k in enumerate(keys))).first()
    return [int(row[f"p{i}"] or 0) for i in range(len(keys))]


def _totals(tx: DataFrame, present: set[str], exp: ex.Expectations, start, end) -> dict:
    """One aggregate: rows, first and last event, rows outside the window, null shares, medians."""
    ts = F.col("event_timestamp")
    aggs = [F.count(F.lit(1)).alias("n"), F.min(US).alias("first"), F.max(US).alias("last")]
    outside = ts.isNull()
    if start is not None:
        outside |= ts < F.lit(start.to_pydatetime())
    if end is not None:
        outside |= ts >= F.lit(end.to_pydatetime())
    aggs.append(F.sum(outside.cast("long")).alias("outside"))
    types = dict(tx.dtypes)
    for col in (c for c in exp.required_columns if c in present and c not in contract.required()):
        null = F.col(col).isNull()
        if types[col] == "string":
            null |= F.col(col) == ""
        elif types[col] == "double":
            null |= F.isnan(col)
        aggs.append(F.avg(null.cast("double")).alias(f"null:{col}"))
    if {"amount", "currency"} <= present:
        amount = F.col("amount")
        for cur in exp.amount_median_range:
            rows = (F.col("currency") == cur) & amount.isNotNull() & ~F.isnan(amount)
            aggs.append(F.sum(rows.cast("long")).alias(f"rows:{cur}"))
            aggs.append(F.percentile(F.when(rows, amount), F.lit(0.5)).alias(f"median:{cur}"))
    return readable_errors(lambda: tx.agg(*aggs).first().asDict())()


def _checks(
    tx: DataFrame, problems: list[str], present: set[str], totals: dict, exp: ex.Expectations, start, end
) -> Checks:
    """(name, thunk) of every check, in the pandas engine's order, each computing its statistics."""
    n = totals["n"]
    yield "schema:columns", lambda: ex.columns_check(present, exp)
    yield "schema:types", lambda: ex.types_check(problems)
    yield "volume:total", lambda: ex.total_check(n, exp)

    fields = [r.field for r in contract.TRANSACTION if r.field in present]
    found: dict = {}

    def keeps(rule: contract.Rule) -> ex.CheckResult:
        if not found:
            found.update(zip(("broken", "examples"), _contract(tx, fields), strict=True))
            keys = [k for e in found["examples"].values() for k, _ in e]
            found["rows"] = dict(zip(keys, _positions(tx, keys), strict=True))
        examples = [f"row {found['rows'][k]}: {m}" for k, m in found["examples"].get(rule.field, [])]
        return ex.contract_check(rule, found["broken"].get(rule.field, 0), n, exp, examples)

    for rule in (r for r in contract.TRANSACTION if r.field in present):
        yield f"contract:{rule.field}", readable_errors(lambda rule=rule: keeps(rule))

    for col in (c for c in exp.required_columns if c in present and c not in contract.required()):
        yield f"null_fraction:{col}", lambda col=col: ex.null_check(col, totals[f"null:{col}"] or 0.0, exp)

    def unique(col: str) -> ex.CheckResult:
        key = F.struct(F.col(US).isNull(), F.col(US), F.col(ORDER))  # pandas' order: nulls last
        groups = tx.groupBy(col).agg(F.count(F.lit(1)).alias("k"), F.min(key).alias("first"))
        dups = groups.where(F.col("k") > 1).cache()
        duplicates = dups.agg(F.sum(F.col("k") - 1)).first()[0] or 0
        examples = [r[col] for r in dups.orderBy("first").limit(EXAMPLES).collect()]
        dups.unpersist()
        return ex.unique_check(col, int(duplicates), examples)

    for col in (c for c in exp.unique_columns if c in present):
        yield f"unique:{col}", readable_errors(lambda col=col: unique(col))

    if {"amount", "currency"} <= present:
        for cur in exp.amount_median_range:
            rows = totals[f"rows:{cur}"] or 0
            if ex.median_applies(rows, exp):
                yield (
                    f"amount_median:{cur}",
                    lambda c=cur, r=rows: ex.median_check(c, totals[f"median:{c}"], r, exp),
                )

    if "event_timestamp" not in present:
        return
    first, last = _stamp(totals["first"]), _stamp(totals["last"])
    yield "window", lambda: ex.window_check(totals["outside"] or 0, first, last, start, end)
    yield "freshness", lambda: ex.freshness_check(last, end, exp)

    def daily() -> ex.CheckResult:
        day = F.unix_micros(F.date_trunc("day", F.col("event_timestamp")))
        rows = tx.where(F.col(US).isNotNull()).groupBy(day.alias("day")).count().collect()
        per_day = pd.Series({_stamp(r["day"]): r["count"] for r in rows}, dtype="int64")
        return ex.daily_check(per_day, start, end, exp)

    yield "volume:daily", readable_errors(daily)


def validate_lake(
    spark: SparkSession,
    transactions_dir: str | Path,
    expectations: ex.Expectations | None = None,
    window_start: datetime | pd.Timestamp | str | None = None,
    window_end: datetime | pd.Timestamp | str | None = None,
) -> ValidationReport:
    """The lake's transactions checked on Spark (every row); the report :func:`validate` would give.

    Raises:
        SparkEngineError: Spark itself failed before any check ran (one readable line).
    """
    exp = expectations or ex.Expectations()
    start, end = utc(window_start), utc(window_end)
    by_day = spark_lake.schema_problems_by_day(transactions_dir, "transactions")
    problems = [p for day in by_day.values() for p in day]
    if by_day:
        problems.append(f"{len(by_day)} partition(s) left out of the other checks")
    present = spark_lake.lake_columns(transactions_dir, "transactions")
    tx = spark_lake.read_lake(spark, transactions_dir, "transactions", skip_days=set(by_day))
    tx = tx.withColumn(US, F.unix_micros("event_timestamp"))
    totals = _totals(tx, present, exp, start, end)
    return run_checks(_checks(tx, problems, present, totals, exp, start, end), totals["n"], start, end)
