"""Training/serving skew in production: served model inputs vs the same inputs recomputed offline.

``python -m relearn.monitoring.skew --log PATH --transactions DIR --labels DIR [--sample N] [--json]``

The predictor's requests in the inference log hold the model-input vectors it actually scored, with each
row's ``transaction_id``. For a sample of them (the newest ``N`` rows of one track) this module finds the
transactions in the lake (day-partitioned Parquet, :mod:`relearn.data.io`), recomputes their features the
way the training set does — :func:`~relearn.features.transforms.entity_feature_tables` rows at each
transaction's own event time, then :func:`~relearn.features.transforms.model_inputs` — and compares them
feature by feature. All labels of the lake are passed: the pandas engine counts a chargeback only once it
was *received* before the transaction, which is exactly what serving could know. Rows whose transaction
is not (yet) in the lake are counted as unmatched, not compared.

Served numbers are float32 (the predictor's FP32 tensor), and the online state sums in a different order
than pandas (~1e-12 relative), so one float32 rounding step may differ: values count as equal within
``rtol=1e-5`` (~80 float32 ulps) plus ``atol=1e-6`` (a z-score of ~0 computed as 1e-12 on one side). A
changed definition (a count off by one, another window, a chargeback counted early) is far above that.

In the drift detector the check runs periodically (:mod:`relearn.monitoring.skew_job`, its gauges
``relearn_feature_skew_*``) when ``RELEARN_DRIFT_SKEW_LAKE_DIR`` (a lake root with ``transactions/`` and
``labels/``, in the cluster a mounted volume of the lake the pipeline ingests from) and
``RELEARN_DRIFT_SKEW_INTERVAL_SECONDS`` are set.
numpy/pandas/pyarrow only: it runs in the platform and the drift environment alike.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

from relearn import commands
from relearn.commands import Command, command_config
from relearn.data import io
from relearn.data.schema import TRANSACTION_SCHEMA
from relearn.events import REQUEST_TYPE
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.features.transforms import entity_feature_tables, model_inputs
from relearn.features.windows import WINDOWS
from relearn.monitoring.payloads import ID_FIELD, Rejected, request_features

log = logging.getLogger("relearn.monitoring.skew")  # not __main__ under python -m

RTOL, ATOL = 1e-5, 1e-6  # float32 rounding of the served vector; see the module docstring
# The events table's tracks (from the CloudEvent headers).
Track = Literal["stable", "canary", "shadow", "all"]
# How long after its transaction a chargeback may arrive (card schemes: 120 days): how far back the lake
# is searched for the transaction (its merchant) of a chargeback received in a window.
CHARGEBACK_DAYS = 120.0
_LONGEST = timedelta(microseconds=max(WINDOWS.values()))


@dataclass
class SkewResult:
    """One check: per input, how many compared rows differ and the largest numeric difference."""

    track: str
    rows: int = 0
    unmatched: int = 0
    unreadable: int = 0
    mismatched: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODEL_INPUTS, 0))
    max_abs_difference: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NUMERIC_INPUTS, 0.0))
    examples: dict[str, list[Any]] = field(default_factory=dict)  # feature -> [id, served, offline]
    checked_at: float = field(default_factory=time.time)

    @property
    def ratios(self) -> dict[str, float]:
        """Share of compared rows that differ per input (NaN when nothing was compared)."""
        return {f: n / self.rows if self.rows else float("nan") for f, n in self.mismatched.items()}

    def skewed(self, max_ratio: float = 0.0) -> list[str]:
        """Inputs whose ratio exceeds ``max_ratio``."""
        return [f for f, r in self.ratios.items() if r > max_ratio]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN ratios become null)."""
        ratios = {f: None if np.isnan(r) else r for f, r in self.ratios.items()}
        return {**asdict(self), "ratios": ratios, "tolerance": {"rtol": RTOL, "atol": ATOL}}


def open_log(path: Path) -> sqlite3.Connection:
    """The inference log, read-only (the detector keeps writing it; a missing file is an error)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no inference log at {path}")
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)


def served_sample(conn: sqlite3.Connection, sample: int, track: str = "stable") -> tuple[pd.DataFrame, int]:
    """The newest ``sample`` served rows: ``transaction_id`` + MODEL_INPUTS, and the unreadable bodies.

    Requests are read newest first (``seq`` is the primary key, so this stops after the sample); bodies
    without the model inputs (a transformer's raw request) or that do not parse count as unreadable, and
    at most ``10 x sample`` requests are read (a log of unreadable ones is not scanned to its start).
    """
    query = "SELECT body FROM events WHERE type = ?" + ("" if track == "all" else " AND track = ?")
    params = (REQUEST_TYPE,) if track == "all" else (REQUEST_TYPE, track)
    rows: list[dict[str, Any]] = []
    unreadable = 0
    cursor = conn.execute(query + " ORDER BY seq DESC LIMIT ?", (*params, 10 * sample))
    for (body,) in cursor:
        try:
            parsed = request_features(body)
        except Rejected:
            unreadable += 1
            continue
        if not all(name in parsed[0] for name in MODEL_INPUTS):
            unreadable += 1
            continue
        rows.extend(parsed)
        if len(rows) >= sample:
            break
    frame = pd.DataFrame(rows[:sample], columns=[ID_FIELD, *MODEL_INPUTS])
    return frame, unreadable


def _find(
    root: Path, ids: set[str], columns: list[str] | None, span: timedelta, before: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Transactions with the given ids, scanning the day partitions newest first (``columns`` only).

    Starts at the day of ``before`` (the newest day if None) and stops once every id is found, or ``span``
    before ``before`` (else before the newest day holding one of the ids): an id missing from the lake
    costs a bounded scan.
    """
    found: list[pd.DataFrame] = []
    remaining, newest = set(ids), before
    for day, directory in sorted(io.partitions(root, "transactions").items(), reverse=True):
        if before is not None and day > before.date():
            continue
        if not remaining or (newest is not None and day < (newest - span).date()):
            break
        for path in sorted(directory.glob("*.parquet")):
            filters = [(ID_FIELD, "in", sorted(remaining))]
            table = pq.read_table(path, columns=columns, filters=filters, schema=TRANSACTION_SCHEMA)
            if table.num_rows:
                part = table.to_pandas()
                found.append(part)
                remaining -= set(part[ID_FIELD])
                if newest is None:
                    newest = pd.Timestamp(part["event_timestamp"].max())
    if not found:
        return TRANSACTION_SCHEMA.empty_table().to_pandas()[columns or TRANSACTION_SCHEMA.names]
    frame = pd.concat(found, ignore_index=True)
    return frame.assign(event_timestamp=frame["event_timestamp"].astype("datetime64[us, UTC]"))


def _at(rows: pd.DataFrame, table: pd.DataFrame, key: str) -> pd.DataFrame:
    """``rows`` with the entity table's row at each row's own event time (point in time: ``[t - w, t)``)."""
    table = table.assign(_t=table["event_timestamp"].astype("datetime64[us, UTC]"))
    table = table.drop(columns="event_timestamp").drop_duplicates([key, "_t"])
    rows = rows.assign(_t=rows["event_timestamp"].astype("datetime64[us, UTC]"))
    return rows.merge(table, on=[key, "_t"], how="left", validate="many_to_one").drop(columns="_t")


def offline_inputs(
    ids: list[str], transactions_dir: Path, labels_dir: Path, chargeback_days: float = CHARGEBACK_DAYS
) -> pd.DataFrame:
    """MODEL_INPUTS recomputed from the lake for the ids found there, indexed by ``transaction_id``."""
    chargeback_delay = timedelta(days=chargeback_days)
    located = _find(transactions_dir, set(ids), [ID_FIELD, "event_timestamp"], _LONGEST + chargeback_delay)
    if located.empty:
        return pd.DataFrame(columns=list(MODEL_INPUTS), index=pd.Index([], name=ID_FIELD))
    # Every window of a sampled transaction lies in [start, end).
    start = located["event_timestamp"].min() - _LONGEST
    end = located["event_timestamp"].max() + pd.Timedelta(microseconds=1)
    transactions = io.read_transactions(transactions_dir, start=start, end=end)
    labels = io.read_labels(labels_dir, until=end)
    # A chargeback received in a window counts for its transaction's merchant, and that transaction may
    # be older than the window: those few rows are read too (outside every window, they count nowhere else).
    received = labels[labels["chargeback_timestamp"] >= start]
    missing = set(received[ID_FIELD]) - set(transactions[ID_FIELD])
    if missing:
        older = _find(transactions_dir, missing, None, chargeback_delay, before=start)
        transactions = pd.concat([older[older["event_timestamp"] < start], transactions], ignore_index=True)
    transactions = transactions.drop_duplicates(ID_FIELD)
    served = transactions[transactions[ID_FIELD].isin(set(ids))]
    # Only the sampled entities' rows are needed: their histories are complete in this subset.
    users, merchants = set(served["user_id"]), set(served["merchant_id"])
    subset = transactions[transactions["user_id"].isin(users) | transactions["merchant_id"].isin(merchants)]
    user_table, merchant_table = entity_feature_tables(subset, labels)
    frame = _at(_at(served, user_table, "user_id"), merchant_table, "merchant_id")
    return model_inputs(frame).set_axis(pd.Index(frame[ID_FIELD], name=ID_FIELD))


def compare(served: pd.DataFrame, offline: pd.DataFrame, track: str = "stable") -> SkewResult:
    """Per-input differences between the served rows and their offline recomputation."""
    known = served[ID_FIELD].isin(offline.index).to_numpy()
    result = SkewResult(track, rows=int(known.sum()), unmatched=int((~known).sum()))
    s = served[known].reset_index(drop=True)
    o = offline.loc[s[ID_FIELD]].reset_index(drop=True)
    for name in MODEL_INPUTS:
        if name in CATEGORICAL_INPUTS:
            a, b = s[name].astype(str).to_numpy(), o[name].astype(str).to_numpy()
            bad = a != b
        else:
            a, b = s[name].to_numpy(np.float64), o[name].to_numpy(np.float64)
            bad = ~np.isclose(a, b, rtol=RTOL, atol=ATOL)
            diff = np.abs(a - b)
            result.max_abs_difference[name] = float(np.nanmax(diff, initial=0.0)) if len(diff) else 0.0
        result.mismatched[name] = int(bad.sum())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            result.examples[name] = [
                str(s[ID_FIELD][i]),
                np.asarray(a[i]).tolist(),
                np.asarray(b[i]).tolist(),
            ]
    return result


def check(
    log_path: Path,
    transactions_dir: Path,
    labels_dir: Path | None = None,
    *,
    sample: int = 2000,
    track: str = "stable",
    chargeback_days: float = CHARGEBACK_DAYS,
) -> SkewResult:
    """Sample the served rows of ``track`` from the log and compare them with the lake's recomputation."""
    if not io.partitions(transactions_dir, "transactions"):  # a missing mount must not read as "no skew"
        raise FileNotFoundError(
            f"no day partitions under {transactions_dir}/transactions: is the lake there?"
        )
    conn = open_log(log_path)
    try:
        served, unreadable = served_sample(conn, sample, track)
    finally:
        conn.close()
    ids = sorted(set(served[ID_FIELD].dropna()))
    offline = offline_inputs(ids, transactions_dir, labels_dir or transactions_dir, chargeback_days)
    result = compare(served, offline, track)
    result.unreadable = unreadable
    return result


def log_result(result: SkewResult, max_ratio: float) -> None:
    """One structured log line per check (the detector's periodic job and the command alike)."""
    log.info(
        "feature skew checked",
        extra={
            "track": result.track,
            "rows": result.rows,
            "unmatched": result.unmatched,
            "unreadable": result.unreadable,
            "skewed_features": result.skewed(max_ratio),
            "worst_ratio": max(result.ratios.values()) if result.rows else None,
        },
    )


def format_table(result: SkewResult) -> str:
    """A readable per-input table of a result."""
    lines = [f"{'feature':<30} {'ratio':>8} {'differ':>7} {'max |diff|':>12}  example (id: served / offline)"]
    for name, ratio in result.ratios.items():
        diff = result.max_abs_difference.get(name)
        example = result.examples.get(name)
        lines.append(
            f"{name:<30} {ratio:>8.4f} {result.mismatched[name]:>7d} "
            f"{'' if diff is None else f'{diff:.6g}':>12}  "
            + (f"{example[0]}: {example[1]!r} / {example[2]!r}" if example else "")
        )
    lines.append(
        f"track {result.track}: {result.rows} rows compared, {result.unmatched} unmatched (not in the lake), "
        f"{result.unreadable} unreadable requests; equal within rtol {RTOL:g}, atol {ATOL:g}"
    )
    return "\n".join(lines)


class SkewCommand(Command):
    """Compare served model inputs (the detector's inference log) with their recomputation from the lake.

    Exit 1 on skew, 2 when nothing was compared. Options also read RELEARN_SKEW_<OPTION>.
    """

    model_config = command_config("python -m relearn.monitoring.skew", "RELEARN_SKEW_")

    log: Path = Field(description="Inference log (inference-log.sqlite3).")
    transactions: Path = Field(description="Lake root holding transactions/.")
    labels: Path | None = Field(None, description="Lake root holding labels/ (default: --transactions).")
    sample: int = Field(2000, ge=1, description="Newest served rows compared.")
    track: Literal["stable", "canary", "shadow", "all"] = Field(
        "stable", description="Track of the requests."
    )
    max_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Tolerated share of differing rows per input (0: the parity promise; float32 rounding "
        "is already tolerated per value).",
    )
    chargeback_days: float = Field(CHARGEBACK_DAYS, gt=0, description="Longest chargeback delay.")
    json_output: bool = Field(False, alias="json", description="Print the result as JSON.")
    _exit_code: int = PrivateAttr(0)

    def cli_cmd(self) -> None:
        """Run the check once and print it; the exit status is left on the command."""
        self.start_logging()
        try:
            options = {"sample": self.sample, "track": self.track, "chargeback_days": self.chargeback_days}
            result = check(self.log, self.transactions, self.labels, **options)
        except FileNotFoundError as error:
            print(f"skew: {error}", file=sys.stderr)
            self._exit_code = 2
            return
        log_result(result, self.max_ratio)
        print(json.dumps(result.to_dict(), indent=2) if self.json_output else format_table(result))
        self._exit_code = 2 if not result.rows else 1 if result.skewed(self.max_ratio) else 0


def main(argv: list[str] | None = None) -> int:
    """The command: exit 0 without skew, 1 when a ratio exceeds ``--max-ratio``, 2 when nothing compared."""
    return commands.run(SkewCommand, argv, "skew check")._exit_code


if __name__ == "__main__":
    sys.exit(main())
