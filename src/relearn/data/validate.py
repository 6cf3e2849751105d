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
from pydantic import BaseModel

from relearn.data import contract
from relearn.data.expectations import (
    Bound,
    CheckResult,
    Expectations,
    columns_check,
    contract_check,
    daily_check,
    freshness_check,
    median_applies,
    median_check,
    null_check,
    total_check,
    types_check,
    unique_check,
    window_check,
)
from relearn.data.schema import TRANSACTION_SCHEMA

log = logging.getLogger("relearn.data.validate")

__all__ = ["CheckResult", "Expectations", "ValidationReport", "run_checks", "utc", "validate"]


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


Checks = Iterator[tuple[str, Callable[[], CheckResult]]]


def _checks(df: pd.DataFrame, exp: Expectations, start: Bound, end: Bound) -> Checks:
    """Yield (name, thunk) for every applicable check; thunks run later, each guarded on its own."""
    present = set(df.columns)
    n = len(df)

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
        return types_check(problems)

    yield "schema:columns", lambda: columns_check(present, exp)
    yield "schema:types", types
    yield "volume:total", lambda: total_check(n, exp)

    for rule in (r for r in contract.TRANSACTION if r.field in present):

        def keeps(rule: contract.Rule = rule) -> CheckResult:
            broken = contract.frame_mask(df, rule)
            examples = contract.frame_messages(df, rule, np.flatnonzero(broken)[:3].tolist())
            return contract_check(rule, int(broken.sum()), n, exp, examples)

        yield f"contract:{rule.field}", keeps

    for col in (c for c in exp.required_columns if c in present and c not in contract.required()):

        def nulls(col: str = col) -> CheckResult:
            return null_check(col, float((df[col].isna() | df[col].eq("")).mean()) if n else 0.0, exp)

        yield f"null_fraction:{col}", nulls

    for col in (c for c in exp.unique_columns if c in present):

        def unique(col: str = col) -> CheckResult:
            dup = df[col].duplicated(keep=False)
            examples = df.loc[dup, col].drop_duplicates().head(3).tolist()
            return unique_check(col, int(df[col].duplicated().sum()), examples)

        yield f"unique:{col}", unique

    if {"amount", "currency"} <= present:
        amount = pd.to_numeric(df["amount"], errors="coerce")
        for cur in exp.amount_median_range:
            rows = amount[df["currency"] == cur].dropna()
            if median_applies(len(rows), exp):
                yield (
                    f"amount_median:{cur}",
                    lambda c=cur, r=rows: median_check(c, float(r.median()), len(r), exp),
                )

    if "event_timestamp" not in present:
        return
    ts = pd.to_datetime(df["event_timestamp"], utc=True, errors="coerce", format="ISO8601")

    def window() -> CheckResult:
        outside = ts.isna()
        if start is not None:
            outside |= ts < start
        if end is not None:
            outside |= ts >= end
        return window_check(int(outside.sum()), ts.min(), ts.max(), start, end)

    yield "window", window
    yield "freshness", lambda: freshness_check(ts.max(), end, exp)
    yield "volume:daily", lambda: daily_check(ts.dropna().dt.floor("D").value_counts(), start, end, exp)


def utc(t: datetime | pd.Timestamp | str | None) -> Bound:
    """A window bound as a UTC timestamp (naive = UTC already)."""
    if t is None:
        return None
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def run_checks(checks: Checks, n_rows: int, start: Bound, end: Bound) -> ValidationReport:
    """Run each check on its own: one that errors counts as failed with the error in its detail."""
    results = []
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
        n_rows=n_rows,
        window_start=None if start is None else start.to_pydatetime(),
        window_end=None if end is None else end.to_pydatetime(),
    )
    log.info(
        "validated batch",
        extra={"ok": report.ok, "rows": report.n_rows, "failed": [c.name for c in report.failed]},
    )
    return report


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
    start, end = utc(window_start), utc(window_end)
    return run_checks(
        _checks(transactions, expectations or Expectations(), start, end), len(transactions), start, end
    )
