"""Batch validation of transactions before they reach features and training.

:func:`validate` runs every check, never raises on bad data, and returns a :class:`ValidationReport`
that renders as Markdown, a self-contained HTML page, or a one-paragraph summary. Checks are named
``kind:column`` (``contract:amount``, ``null_fraction:merchant_category``, ``amount_median:EUR``) so alerts
and tests can refer to them. ``contract:<field>`` holds each record to the data contract serving enforces
(:mod:`relearn.data.contract`), its examples in the words a client is refused with.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from relearn.data import contract
from relearn.data.schema import TRANSACTION_SCHEMA

log = logging.getLogger("relearn.data.validate")


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


class ValidationReport(BaseModel):
    """All check results for one batch; ``ok`` only if every check passed."""

    checks: list[CheckResult]
    n_rows: int
    window_start: datetime | None = None
    window_end: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        """The failing checks."""
        return [c for c in self.checks if not c.ok]

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (KeyError if it did not run)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def _window(self) -> str:
        if self.window_start is None and self.window_end is None:
            return "no window given"
        return f"window [{self.window_start}, {self.window_end})"

    def summary(self) -> str:
        """One paragraph: verdict, size, and the failing checks with what was observed."""
        head = f"{self.n_rows:,} rows, {self._window()}"
        if self.ok:
            return f"Validation PASSED: all {len(self.checks)} checks passed on {head}."
        fails = "; ".join(f"{c.name} (observed {c.observed}, expected {c.expected})" for c in self.failed)
        return (
            f"Validation FAILED: {len(self.failed)} of {len(self.checks)} checks failed on {head}: {fails}."
        )

    def to_markdown(self) -> str:
        """A Markdown report: summary paragraph and a table of every check."""

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [
            f"# Data validation: {'PASSED' if self.ok else 'FAILED'}",
            "",
            self.summary(),
            "",
            "| check | status | observed | expected | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            status = f"**{c.status}**" if not c.ok else c.status
            lines.append(
                f"| {cell(c.name)} | {status} | {cell(c.observed)} | {cell(c.expected)} | {cell(c.detail)} |"
            )
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page (inline CSS, no scripts) with failing checks highlighted."""
        esc = html.escape
        rows = "\n".join(
            f'<tr class="{c.status.lower()}"><td>{esc(c.name)}</td><td>{esc(c.status)}</td>'
            f"<td>{esc(c.observed)}</td><td>{esc(c.expected)}</td><td>{esc(c.detail)}</td></tr>"
            for c in sorted(self.checks, key=lambda c: c.ok)  # failures first
        )
        verdict = "PASSED" if self.ok else "FAILED"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>relearn data validation: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
h1 {{ color: {"#1a7f37" if self.ok else "#cf222e"}; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: .35rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
tr.fail td {{ background: #ffebe9; font-weight: 600; }}
tr.skipped td {{ color: #888; }}
</style></head>
<body>
<h1>Data validation: {verdict}</h1>
<p>{esc(self.summary())}</p>
<table>
<thead><tr><th>check</th><th>status</th><th>observed</th><th>expected</th><th>detail</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body></html>
"""


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _checks(
    df: pd.DataFrame, exp: Expectations, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> Iterator[tuple[str, Callable[[], CheckResult]]]:
    """Yield (name, thunk) for every applicable check; thunks run later, each guarded on its own."""
    present = set(df.columns)
    n = len(df)

    def columns() -> CheckResult:
        missing = [c for c in exp.required_columns if c not in present]
        return CheckResult(
            name="schema:columns",
            ok=not missing,
            observed=f"missing {missing}" if missing else "all present",
            expected=f"{len(exp.required_columns)} columns",
        )

    def types() -> CheckResult:
        # Nullability is left to the null checks; here only "can it be stored with the schema's types".
        fields = [f.with_nullable(True) for f in TRANSACTION_SCHEMA if f.name in present]
        problems = []
        try:
            pa.Table.from_pandas(df[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False)
        except (pa.ArrowException, ValueError, TypeError) as e:
            problems.append(str(e).splitlines()[0][:200])
        if "event_timestamp" in present and getattr(df["event_timestamp"].dtype, "tz", None) is None:
            problems.append(f"event_timestamp has dtype {df['event_timestamp'].dtype}, not tz-aware")
        return CheckResult(
            name="schema:types",
            ok=not problems,
            observed="; ".join(problems) or "castable",
            expected="castable to TRANSACTION_SCHEMA",
        )

    def volume_total() -> CheckResult:
        return CheckResult(
            name="volume:total", ok=n >= exp.min_rows, observed=f"{n:,}", expected=f">= {exp.min_rows:,}"
        )

    yield "schema:columns", columns
    yield "schema:types", types
    yield "volume:total", volume_total

    for rule in (r for r in contract.TRANSACTION if r.field in present):

        def keeps(rule: contract.Rule = rule) -> CheckResult:
            broken = contract.frame_mask(df, rule)
            k, tolerated = int(broken.sum()), exp.tolerated_fraction.get(rule.field, 0.0)
            return CheckResult(
                name=f"contract:{rule.field}",
                ok=k <= tolerated * n,
                observed=f"{k:,} rows break it ({_pct(k / n if n else 0.0)})",
                expected=f"<= {_pct(tolerated)} of rows",
                detail="; ".join(contract.frame_messages(df, rule, np.flatnonzero(broken)[:3].tolist())),
            )

        yield f"contract:{rule.field}", keeps

    for col in (c for c in exp.required_columns if c in present and c not in contract.required()):

        def nulls(col: str = col) -> CheckResult:
            frac = float((df[col].isna() | df[col].eq("")).mean()) if n else 0.0
            return CheckResult(
                name=f"null_fraction:{col}",
                ok=frac <= exp.max_null_fraction,
                observed=_pct(frac),
                expected=f"<= {_pct(exp.max_null_fraction)}",
            )

        yield f"null_fraction:{col}", nulls

    for col in exp.unique_columns:
        if col in present:

            def unique(col: str = col) -> CheckResult:
                dup = df[col].duplicated(keep=False)
                examples = df.loc[dup, col].drop_duplicates().head(3).tolist()
                return CheckResult(
                    name=f"unique:{col}",
                    ok=not dup.any(),
                    observed=f"{int(df[col].duplicated().sum()):,} duplicates",
                    expected="0",
                    detail=f"e.g. {examples}" if examples else "",
                )

            yield f"unique:{col}", unique

    if {"amount", "currency"} <= present:
        amount = pd.to_numeric(df["amount"], errors="coerce")
        for cur, (lo, hi) in exp.amount_median_range.items():
            rows = amount[df["currency"] == cur].dropna()
            if len(rows) < exp.min_rows_for_median:
                continue

            def median(cur: str = cur, lo: float = lo, hi: float = hi, rows: pd.Series = rows) -> CheckResult:
                m = float(rows.median())
                return CheckResult(
                    name=f"amount_median:{cur}",
                    ok=lo <= m <= hi,
                    observed=f"{m:,.2f} over {len(rows):,} rows",
                    expected=f"[{lo:g}, {hi:g}]",
                )

            yield f"amount_median:{cur}", median

    if "event_timestamp" not in present:
        return
    ts = pd.to_datetime(df["event_timestamp"], utc=True, errors="coerce", format="ISO8601")

    def window() -> CheckResult:
        if start is None and end is None:
            return CheckResult(name="window", ok=True, skipped=True, detail="no window given")
        outside = ts.isna()
        if start is not None:
            outside |= ts < start
        if end is not None:
            outside |= ts >= end
        return CheckResult(
            name="window",
            ok=not outside.any(),
            observed=f"{int(outside.sum()):,} rows outside; events {ts.min()} .. {ts.max()}",
            expected=f"all in [{start}, {end})",
        )

    def freshness() -> CheckResult:
        if end is None:
            return CheckResult(name="freshness", ok=True, skipped=True, detail="no window end given")
        newest = ts.max()
        limit = end - pd.Timedelta(hours=exp.max_staleness_hours)
        lag = (
            "no events"
            if pd.isna(newest)
            else f"newest {newest} ({(end - newest) / pd.Timedelta(hours=1):.1f} h before end)"
        )
        return CheckResult(
            name="freshness",
            ok=not pd.isna(newest) and newest >= limit,
            observed=lag,
            expected=f"newest event >= {limit}",
        )

    def daily_volume() -> CheckResult:
        # Only full days count: a window that starts or ends mid-day would otherwise flag its edges.
        valid = ts.dropna()
        first = start.ceil("D") if start is not None else (valid.min().floor("D") if len(valid) else None)
        stop = (
            end.floor("D")
            if end is not None
            else (valid.max().floor("D") + pd.Timedelta(days=1) if len(valid) else None)
        )
        if first is None or stop is None or stop <= first:
            return CheckResult(name="volume:daily", ok=True, skipped=True, detail="no full day to compare")
        days = pd.date_range(first, stop, freq="D", inclusive="left")
        counts = valid.dt.floor("D").value_counts().reindex(days, fill_value=0)
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

    yield "window", window
    yield "freshness", freshness
    yield "volume:daily", daily_volume


def validate(
    transactions: pd.DataFrame,
    expectations: Expectations | None = None,
    window_start: datetime | pd.Timestamp | str | None = None,
    window_end: datetime | pd.Timestamp | str | None = None,
) -> ValidationReport:
    """Check a batch of transactions against ``expectations``; never raises on bad data.

    Args:
        transactions: The batch (TRANSACTION_SCHEMA columns, though anything is accepted).
        expectations: Thresholds; defaults to :class:`Expectations` ().
        window_start: Inclusive start of the batch's window; enables the window check.
        window_end: Exclusive end of the window; enables the window and freshness checks.

    Returns:
        The report; a check that itself errors counts as failed with the error in its detail.
    """
    exp = expectations or Expectations()

    def utc(t: datetime | pd.Timestamp | str | None) -> pd.Timestamp | None:
        if t is None:
            return None
        t = pd.Timestamp(t)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")

    start, end = utc(window_start), utc(window_end)
    results = []
    checks = _checks(transactions, exp, start, end)
    while True:
        try:
            name, thunk = next(checks)
        except StopIteration:
            break
        except Exception as e:  # a preparation step failed: report it and stop preparing
            results.append(CheckResult(name="internal", ok=False, detail=f"{type(e).__name__}: {e}"))
            break
        try:
            results.append(thunk())
        except Exception as e:  # bad data must produce a failed check, not an exception
            results.append(
                CheckResult(name=name, ok=False, observed="error", detail=f"{type(e).__name__}: {e}")
            )
    report = ValidationReport(
        checks=results,
        n_rows=len(transactions),
        window_start=None if start is None else start.to_pydatetime(),
        window_end=None if end is None else end.to_pydatetime(),
    )
    log.info(
        "validated batch",
        extra={"ok": report.ok, "rows": report.n_rows, "failed": [c.name for c in report.failed]},
    )
    return report
