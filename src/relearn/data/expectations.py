"""What a healthy batch of transactions looks like, and the verdict of each check on it.

One definition of each expectation (its threshold, verdict and words) for every engine: the engines
compute only the statistics, :mod:`relearn.data.validate` with pandas on a loaded batch,
:mod:`relearn.data.validate_spark` with Spark aggregates over the lake, and both hand them to the
``*_check`` functions here, so a batch gets the same report on either.
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, Field

from relearn.data import contract
from relearn.data.schema import TRANSACTION_SCHEMA


class Expectations(BaseModel):
    """What a healthy batch of transactions looks like. The defaults fit the synthetic world.

    Each record is held to the data contract (:mod:`relearn.data.contract`: required fields, types, ranges,
    domains), the one serving enforces; these are the batch-level expectations on top.
    """

    required_columns: tuple[str, ...] = Field(
        TRANSACTION_SCHEMA.names, description="Columns that must exist."
    )
    max_null_fraction: float = Field(
        0.01, description="Highest null share of a column the contract lets be null."
    )
    tolerated_fraction: dict[str, float] = Field(
        {"amount": 0.001}, description="Share of rows that may break a field's contract rule (others: 0)."
    )
    amount_median_range: dict[str, tuple[float, float]] = Field(
        {"EUR": (5, 500), "GBP": (5, 500), "USD": (5, 500), "PLN": (20, 2_000), "SEK": (50, 5_000)},
        description="Plausible median amount per currency; catches unit bugs (cents instead of euros).",
    )
    min_rows_for_median: int = Field(
        100, description="Only currencies with this many rows get a median check."
    )
    unique_columns: tuple[str, ...] = Field(("transaction_id",), description="Columns without duplicates.")
    min_rows: int = Field(1, description="Fewest rows a batch may have.")
    min_rows_per_day: int = Field(1, description="Fewest rows any full day may have (0 = a day is missing).")
    daily_volume_min_ratio: float = Field(0.5, description="A day below this × the median day is suspicious.")
    daily_volume_max_ratio: float = Field(2.0, description="A day above this × the median day is suspicious.")
    max_staleness_hours: float = Field(
        6.0, description="The newest event must be this close to the window end."
    )


class CheckResult(BaseModel):
    """One check: its name, verdict, and what was observed versus expected (as readable text)."""

    name: str
    ok: bool
    observed: str = ""
    expected: str = ""
    detail: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        """``pass``, ``FAIL`` or ``skipped``."""
        return "skipped" if self.skipped else ("pass" if self.ok else "FAIL")


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def columns_check(present: set[str], exp: Expectations) -> CheckResult:
    """``schema:columns``: every required column exists."""
    missing = [c for c in exp.required_columns if c not in present]
    observed = f"missing {missing}" if missing else "all present"
    return CheckResult(
        name="schema:columns",
        ok=not missing,
        observed=observed,
        expected=f"{len(exp.required_columns)} columns",
    )


def types_check(problems: list[str]) -> CheckResult:
    """``schema:types``: the batch can be stored with the schema's types (``problems`` says why not)."""
    return CheckResult(
        name="schema:types",
        ok=not problems,
        observed="; ".join(problems) or "castable",
        expected="castable to TRANSACTION_SCHEMA",
    )


def total_check(n: int, exp: Expectations) -> CheckResult:
    """``volume:total``: the batch has at least ``min_rows`` rows."""
    return CheckResult(
        name="volume:total", ok=n >= exp.min_rows, observed=f"{n:,}", expected=f">= {exp.min_rows:,}"
    )


def contract_check(
    rule: contract.Rule, broken: int, n: int, exp: Expectations, examples: list[str]
) -> CheckResult:
    """``contract:<field>``: at most the tolerated share of rows breaks the field's rule."""
    tolerated = exp.tolerated_fraction.get(rule.field, 0.0)
    return CheckResult(
        name=f"contract:{rule.field}",
        ok=broken <= tolerated * n,
        observed=f"{broken:,} rows break it ({_pct(broken / n if n else 0.0)})",
        expected=f"<= {_pct(tolerated)} of rows",
        detail="; ".join(examples),
    )


def null_check(col: str, fraction: float, exp: Expectations) -> CheckResult:
    """``null_fraction:<col>``: an optional column is null (or "") in at most ``max_null_fraction``."""
    return CheckResult(
        name=f"null_fraction:{col}",
        ok=fraction <= exp.max_null_fraction,
        observed=_pct(fraction),
        expected=f"<= {_pct(exp.max_null_fraction)}",
    )


def unique_check(col: str, duplicates: int, examples: list) -> CheckResult:
    """``unique:<col>``: no value twice (``duplicates``: rows beyond each value's first)."""
    return CheckResult(
        name=f"unique:{col}",
        ok=duplicates == 0,
        observed=f"{duplicates:,} duplicates",
        expected="0",
        detail=f"e.g. {examples}" if examples else "",
    )


def median_applies(rows: int, exp: Expectations) -> bool:
    """Whether a currency has enough rows for its median check."""
    return rows >= exp.min_rows_for_median


def median_check(cur: str, median: float, rows: int, exp: Expectations) -> CheckResult:
    """``amount_median:<currency>``: the median amount is plausible (a unit bug moves it by 100×)."""
    lo, hi = exp.amount_median_range[cur]
    return CheckResult(
        name=f"amount_median:{cur}",
        ok=lo <= median <= hi,
        observed=f"{median:,.2f} over {rows:,} rows",
        expected=f"[{lo:g}, {hi:g}]",
    )


Bound = pd.Timestamp | None


def window_check(outside: int, first: Bound, last: Bound, start: Bound, end: Bound) -> CheckResult:
    """``window``: no row outside ``[start, end)`` or without a time (``first``..``last``: all events)."""
    if start is None and end is None:
        return CheckResult(name="window", ok=True, skipped=True, detail="no window given")
    return CheckResult(
        name="window",
        ok=outside == 0,
        observed=f"{outside:,} rows outside; events {first} .. {last}",
        expected=f"all in [{start}, {end})",
    )


def freshness_check(newest: Bound, end: Bound, exp: Expectations) -> CheckResult:
    """``freshness``: the newest event is at most ``max_staleness_hours`` before the window's end."""
    if end is None:
        return CheckResult(name="freshness", ok=True, skipped=True, detail="no window end given")
    limit = end - pd.Timedelta(hours=exp.max_staleness_hours)
    lag = (
        "no events"
        if newest is None or pd.isna(newest)
        else f"newest {newest} ({(end - newest) / pd.Timedelta(hours=1):.1f} h before end)"
    )
    return CheckResult(
        name="freshness",
        ok=newest is not None and not pd.isna(newest) and newest >= limit,
        observed=lag,
        expected=f"newest event >= {limit}",
    )


def daily_check(per_day: pd.Series, start: Bound, end: Bound, exp: Expectations) -> CheckResult:
    """``volume:daily``: each full day's count within the ratios of the median day.

    ``per_day``: event counts by UTC midnight (days without events absent).
    """
    # Only full days count: a window that starts or ends mid-day would otherwise flag its edges.
    first = start.ceil("D") if start is not None else (per_day.index.min() if len(per_day) else None)
    stop = (
        end.floor("D")
        if end is not None
        else (per_day.index.max() + pd.Timedelta(days=1) if len(per_day) else None)
    )
    if first is None or stop is None or stop <= first:
        return CheckResult(name="volume:daily", ok=True, skipped=True, detail="no full day to compare")
    days = pd.date_range(first, stop, freq="D", inclusive="left")
    counts = per_day.reindex(days, fill_value=0)
    med = float(counts.median())
    low = counts[(counts < exp.daily_volume_min_ratio * med) | (counts < exp.min_rows_per_day)]
    high = counts[counts > exp.daily_volume_max_ratio * med]
    odd = pd.concat([low, high]).sort_index()
    return CheckResult(
        name="volume:daily",
        ok=odd.empty,
        observed=f"{len(odd)} of {len(days)} days out of range; median {med:,.0f}/day",
        expected=f"days in [{exp.daily_volume_min_ratio:g}, {exp.daily_volume_max_ratio:g}] × median, "
        f">= {exp.min_rows_per_day}",
        detail=", ".join(f"{d:%Y-%m-%d}: {c:,}" for d, c in odd.head(5).items()),
    )
