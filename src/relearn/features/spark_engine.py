"""The Spark engine of the features step: entity feature tables and the point-in-time training set.

The same rows as the pandas engine (:func:`relearn.features.transforms.entity_feature_tables`,
:func:`relearn.features.store.training_set`; ``tests/features/test_spark_parity.py`` holds them equal),
computed with Spark window functions so the data never has to fit one process:

* Widths come from :data:`~relearn.features.windows.WINDOWS`; the finalisers (:func:`mean_std`,
  :func:`chargeback_rate`), the data contract (which rows make a history) and the request-time features
  (:func:`model_inputs`) are the pandas functions themselves, run on Arrow batches. Spark computes only the
  intermediate values of each window (counts, centred sums, distinct count, last event), as windows.py
  splits an aggregation.
* ``[t - w, t)`` is a difference of two *growing* range frames per entity ("events at or before t - 1 µs"
  minus "at or before t - w - 1 µs"): Spark evaluates those incrementally, so a merchant with thousands of
  events a day costs O(n) after the sort, not O(n × window). Evaluation points (``t``, ``t + 1 µs``, a
  chargeback's receipt + 1 µs) are rows of the same sort that carry no event.
* Distinct merchants are exact: a (user, merchant) pair is in the window of t iff its last event before t
  is at or after t - w, so #events before t minus #(min(e + w, next event of the pair)) before t counts
  each pair in the window once (the pandas engine's identity).
* The user's amount mean/std come from Spark's Welford aggregates (count, mean, m2) over the window itself
  (a sliding frame, short for a user): m2 is exact where all amounts are equal and stable where they
  nearly are, where the pandas engine falls back to direct sums for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)
from pyspark.sql import types as T  # noqa: N812

from relearn.data import contract
from relearn.data.spark_lake import ORDER
from relearn.features.spec import (
    CATEGORICAL_INPUTS,
    FEATURE_SERVICE,
    LABEL,
    NUMERIC_INPUTS,
)
from relearn.features.transforms import model_inputs
from relearn.features.windows import US, WINDOWS, chargeback_rate, mean_std

VALID = "_valid"  # the row holds to the data contract, so it is part of its entities' histories
_NEVER = np.iinfo(np.int64).max


# ----------------------------------------------------------------------------------------- shared code
def with_contract(tx: DataFrame) -> DataFrame:
    """``tx`` plus :data:`VALID`, decided by :func:`relearn.data.contract.frame_masks` on Arrow batches."""
    schema = T.StructType([*tx.schema.fields, T.StructField(VALID, T.BooleanType(), False)])

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            masks = contract.frame_masks(batch)
            broken = np.logical_or.reduce(list(masks.values())) if masks else np.zeros(len(batch), bool)
            yield batch.assign(**{VALID: ~np.asarray(broken, dtype=bool)})

    return tx.mapInPandas(check, schema)


def _finish_mean_std(n: pd.Series, s: pd.Series, ss: pd.Series, centre: pd.Series) -> pd.DataFrame:
    mean, std = mean_std(n.to_numpy(), s.to_numpy(), ss.to_numpy(), centre.fillna(0.0).to_numpy())
    return pd.DataFrame({"mean": mean, "std": std})


def _finish_rate(chargebacks: pd.Series, transactions: pd.Series) -> pd.Series:
    return pd.Series(chargeback_rate(chargebacks.to_numpy(), transactions.to_numpy()))


def _udfs() -> tuple:
    """The shared finalisers as vectorised UDFs (created on use: a UDF needs pyspark, not a session)."""
    return (
        F.pandas_udf(_finish_mean_std, "mean double, std double"),
        F.pandas_udf(_finish_rate, "double"),
    )


def _keyed(tx: DataFrame) -> DataFrame:
    """Rows with their entities and time (the others are in no table), event time as epoch µs ``t``."""
    keep = (
        F.col("user_id").isNotNull() & F.col("merchant_id").isNotNull() & F.col("event_timestamp").isNotNull()
    )
    return tx.where(keep).withColumn("t", F.unix_micros("event_timestamp"))


def _framed(key: str) -> tuple:
    """``count_in(col, w)`` and ``sum_in(col, w)``: aggregates of ``col`` over ``[q - w, q)`` per ``key``."""
    by_time = Window.partitionBy(key).orderBy("q")

    def upto(offset: int) -> Window:  # rows with q' <= q - offset: a growing frame, evaluated incrementally
        return by_time.rangeBetween(Window.unboundedPreceding, -offset)

    def count_in(col: str, width: int) -> Column:
        return F.count(col).over(upto(1)) - F.count(col).over(upto(width + 1))

    def sum_in(col: str, width: int) -> Column:
        inner = F.coalesce(F.sum(col).over(upto(1)), F.lit(0.0))
        return inner - F.coalesce(F.sum(col).over(upto(width + 1)), F.lit(0.0))

    return by_time, upto, count_in, sum_in


def _queries(frame: DataFrame, key: str, *times: Column) -> DataFrame:
    """Distinct evaluation points ``(key, q)``, flagged ``query``."""
    parts = [frame.select(key, t.alias("q")) for t in times]
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return union.distinct().withColumn("query", F.lit(True))


def _timestamp(q: str = "q") -> Column:
    return F.timestamp_micros(q).alias("event_timestamp")


# ----------------------------------------------------------------------------------------------- users
def user_table(tx: DataFrame) -> DataFrame:
    """``user_id, event_timestamp, *USER_FEATURES`` from keyed rows with :data:`VALID` and :data:`ORDER`."""
    finish_mean_std, _ = _udfs()
    ev = tx.where(F.col(VALID)).select("user_id", "merchant_id", "t", "amount", "country", "device_id", ORDER)
    distinct_w = WINDOWS["user_distinct_merchants_7d"]
    pair = Window.partitionBy("user_id", "merchant_id").orderBy("t")
    end = F.least(F.col("t") + distinct_w, F.coalesce(F.lead("t").over(pair), F.lit(_NEVER)))
    last = F.struct(F.col("t").alias("t"), F.col(ORDER).alias("o"), "country", "device_id")
    rows = (
        ev.select(
            "user_id",
            F.col("t").alias("q"),
            F.lit(1).alias("ev"),
            F.col("amount").alias("amt"),
            last.alias("last"),
        )
        .unionByName(ev.select("user_id", end.alias("q"), F.lit(1).alias("ended")), allowMissingColumns=True)
        .unionByName(_queries(ev, "user_id", F.col("t"), F.col("t") + 1), allowMissingColumns=True)
    )
    by_time, upto, count_in, _ = _framed("user_id")
    stats_w = WINDOWS["user_amount_mean_7d"]
    assert WINDOWS["user_amount_std_7d"] == stats_w  # one frame serves both
    sliding = by_time.rangeBetween(-stats_w, -1)  # short (a user's week): recomputed per row, exactly
    horizon = WINDOWS["user_last_txn_unix"]
    assert WINDOWS["user_last_country"] == WINDOWS["user_last_device"] == horizon
    framed = rows.select(
        "user_id",
        "q",
        "query",
        *(
            count_in("ev", WINDOWS[n]).alias(n)
            for n in ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d")
        ),
        (F.count("ev").over(upto(1)) - F.count("ended").over(upto(1))).alias("user_distinct_merchants_7d"),
        F.max("last").over(upto(1)).alias("last"),
        F.count("amt").over(sliding).alias("n"),
        F.avg("amt").over(sliding).alias("avg"),
        F.var_samp("amt").over(sliding).alias("var"),
    ).where(F.col("query"))
    # Welford's (count, mean, m2) of the window, as mean_std takes them: centred on the mean, s = 0.
    m2 = F.when(F.col("n") > 1, F.col("var") * (F.col("n") - 1)).otherwise(F.lit(0.0))
    stats = finish_mean_std(F.col("n"), F.lit(0.0), m2, F.coalesce(F.col("avg"), F.lit(0.0)))
    recent = F.col("last.t") >= F.col("q") - horizon
    return framed.select(
        "user_id",
        _timestamp(),
        "user_txn_count_1h",
        "user_txn_count_24h",
        "user_txn_count_7d",
        stats["mean"].alias("user_amount_mean_7d"),
        stats["std"].alias("user_amount_std_7d"),
        "user_distinct_merchants_7d",
        F.when(recent, F.col("last.t") / US).alias("user_last_txn_unix"),
        F.when(recent, F.col("last.country")).alias("user_last_country"),
        F.when(recent, F.col("last.device_id")).alias("user_last_device"),
    )


# ------------------------------------------------------------------------------------------- merchants
def merchant_table(tx: DataFrame, labels: DataFrame) -> DataFrame:
    """``merchant_id, event_timestamp, *MERCHANT_FEATURES``; chargebacks count by their receipt time."""
    finish_mean_std, finish_rate = _udfs()
    # A chargeback belongs to the merchant of its transaction's first row (valid or not: the feed takes it
    # with the merchant); duplicates of a label keep the earliest receipt; is_fraud False is no signal.
    first = tx.groupBy("transaction_id").agg(F.min(F.struct("t", ORDER, "merchant_id")).alias("first"))
    cb = (
        labels.where(F.coalesce(F.col("is_fraud"), F.lit(False)))
        .groupBy("transaction_id")
        .agg(F.min("chargeback_timestamp").alias("received"))
        .join(
            first.select("transaction_id", F.col("first.merchant_id").alias("merchant_id")), "transaction_id"
        )
        .select("merchant_id", F.unix_micros("received").alias("q"), F.lit(1).alias("cb"))
    )
    ev = tx.where(F.col(VALID)).select("merchant_id", "t", "amount")
    # Amounts centred on the merchant's mean keep the prefix sums the size of one merchant's history.
    centres = ev.groupBy("merchant_id").agg(F.avg("amount").alias("centre"))
    rows = (
        ev.select("merchant_id", F.col("t").alias("q"), F.lit(1).alias("ev"), F.col("amount").alias("amt"))
        .unionByName(cb, allowMissingColumns=True)
        .unionByName(
            _queries(ev, "merchant_id", F.col("t"), F.col("t") + 1)
            .unionByName(_queries(cb, "merchant_id", F.col("q") + 1))
            .distinct(),
            allowMissingColumns=True,
        )
        .join(F.broadcast(centres), "merchant_id", "left")
        .withColumn("x", F.col("amt") - F.col("centre"))
    )
    _, _, count_in, sum_in = _framed("merchant_id")
    mean_w, rate_w = WINDOWS["merchant_amount_mean_7d"], WINDOWS["merchant_chargeback_rate_30d"]
    framed = rows.select(
        "merchant_id",
        "q",
        "query",
        "centre",
        count_in("ev", WINDOWS["merchant_txn_count_24h"]).alias("merchant_txn_count_24h"),
        count_in("ev", mean_w).alias("n"),
        sum_in("x", mean_w).alias("s"),
        count_in("cb", rate_w).alias("cb_n"),
        count_in("ev", rate_w).alias("tx_n"),
    ).where(F.col("query"))
    stats = finish_mean_std(F.col("n"), F.col("s"), F.lit(0.0), F.col("centre"))
    return framed.select(
        "merchant_id",
        _timestamp(),
        "merchant_txn_count_24h",
        stats["mean"].alias("merchant_amount_mean_7d"),
        finish_rate(F.col("cb_n"), F.col("tx_n")).alias("merchant_chargeback_rate_30d"),
    )


def entity_feature_tables(tx: DataFrame, labels: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The Spark counterpart of :func:`relearn.features.transforms.entity_feature_tables`.

    ``tx`` has the transaction columns and :data:`ORDER` (the pandas engine's row order: it breaks ties of
    one user's events at one instant for ``user_last_*``). Same columns and types; rows unordered.
    """
    fields = [r.field for r in contract.TRANSACTION if r.field in tx.columns]  # what the contract reads
    keyed = with_contract(_keyed(tx.select(*fields, ORDER))).cache()
    return user_table(keyed), merchant_table(keyed, labels)


# ---------------------------------------------------------------------------------- point-in-time join
def as_of(entity: DataFrame, table: DataFrame, key: str, names: list[str], ttl_us: int | None) -> DataFrame:
    """``entity`` plus ``names`` of the latest ``table`` row of its ``key`` with ``t - ttl <= ts <= t``.

    Feast's point-in-time semantics (what ``pd.merge_asof(direction="backward", tolerance=ttl)`` gives the
    pandas engine): a feature row at the entity row's own instant counts. One sort per view, no range join.
    """
    feats = table.select(
        F.coalesce(F.col(key), F.lit("")).alias(key),
        F.unix_micros("event_timestamp").alias("_ts"),
        F.lit(0).alias("_kind"),
        F.struct(F.unix_micros("event_timestamp").alias("ts"), *names).alias("_f"),
    )
    rows = entity.withColumn("_ts", F.col("t")).withColumn("_kind", F.lit(1))
    rows = rows.unionByName(feats, allowMissingColumns=True)
    upto = Window.partitionBy(key).orderBy("_ts", "_kind").rowsBetween(Window.unboundedPreceding, 0)
    found = rows.withColumn("_f", F.last("_f", ignorenulls=True).over(upto)).where(F.col("_kind") == 1)
    fresh = F.col("_f").isNotNull() if ttl_us is None else F.col("_f.ts") >= F.col("t") - ttl_us
    return found.select(
        *(c for c in entity.columns), *(F.when(fresh, F.col(f"_f.{n}")).alias(n) for n in names)
    )


def historical_features(store, entity: DataFrame) -> DataFrame:
    """The feature service's views joined as of ``t``, with the sources and TTLs registered in Feast."""
    spark = entity.sparkSession
    frame = entity
    for projection in store.get_feature_service(FEATURE_SERVICE).feature_view_projections:
        view = store.get_feature_view(projection.name)
        key = view.entity_columns[0].name
        names = [f.name for f in projection.features]
        source = view.batch_source
        table = spark.read.parquet(source.path).withColumnRenamed(source.timestamp_field, "event_timestamp")
        ttl = int(view.ttl.total_seconds() * US) if view.ttl else None
        frame = as_of(frame, table, key, names, ttl)
    return frame


def _training_schema(frame: DataFrame, passthrough: list[str]) -> T.StructType:
    fields = {f.name: f for f in frame.schema.fields}
    out = [fields[c] for c in passthrough]
    out += [T.StructField(n, T.FloatType(), False) for n in NUMERIC_INPUTS]
    out += [T.StructField(n, T.StringType(), True) for n in CATEGORICAL_INPUTS]
    return T.StructType([*out, T.StructField(LABEL, T.LongType(), False), fields[ORDER]])


def training_set(store, tx: DataFrame, labels: DataFrame, label_cutoff: datetime) -> DataFrame:
    """The Spark counterpart of :func:`relearn.features.store.training_set` (same columns and rows).

    Sorted by ``event_timestamp`` then :data:`ORDER` (the pandas engine's stable sort).
    """
    from relearn.features.store import TRAINING_COLUMNS

    passthrough = [c for c in TRAINING_COLUMNS if c in tx.columns]
    cutoff = F.lit(
        pd.Timestamp(label_cutoff).tz_convert("UTC") if pd.Timestamp(label_cutoff).tzinfo else label_cutoff
    )
    known = (
        labels.where(F.coalesce(F.col("is_fraud"), F.lit(False)) & (F.col("chargeback_timestamp") <= cutoff))
        .select("transaction_id", F.lit(1).cast("long").alias(LABEL))
        .distinct()
    )
    keyed = tx.withColumn("t", F.unix_micros("event_timestamp"))
    for key in ("user_id", "merchant_id"):
        keyed = keyed.withColumn(key, F.coalesce(F.col(key).cast("string"), F.lit("")))
    joined = historical_features(store, keyed).join(known, "transaction_id", "left")
    joined = joined.withColumn(LABEL, F.coalesce(F.col(LABEL), F.lit(0).cast("long")))
    schema = _training_schema(joined, passthrough)

    def finish(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            out = pd.concat([batch[passthrough], model_inputs(batch)], axis=1)
            out[LABEL], out[ORDER] = batch[LABEL].to_numpy(), batch[ORDER].to_numpy()
            yield out

    return joined.mapInPandas(finish, schema).orderBy("event_timestamp", ORDER)


def with_order(frame: pd.DataFrame) -> pd.DataFrame:
    """A pandas frame plus :data:`ORDER` = its row position (the pandas engine's input, for Spark)."""
    return frame.assign(**{ORDER: np.arange(len(frame), dtype=np.int64)})


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """A Spark result as the pandas engine types it (UTC µs timestamps; null floats arrive as NaN)."""
    out = frame.toPandas()
    if "event_timestamp" in out:
        out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).dt.as_unit("us")
    return out
