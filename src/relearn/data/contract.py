"""The record-level data contract: what one transaction (or chargeback) record must be.

One definition for every consumer: the pipeline's validation (:mod:`relearn.data.validate`, over whole
frames, its batch-level checks and tolerances on top), the transformer on every request (v1, v2 REST, v2
gRPC), batch scoring and the feature feed. They word a violation alike, with the row of the batch:
``row 0: field 'amount' must be a number > 0 and <= 50000 for currency EUR (got -3.0)``.

To change the contract, change this file: the rules (:data:`TRANSACTION`, :data:`CHARGEBACK`) and the
amount bounds. The categorical domains are :mod:`relearn.data.schema`'s (they are the model's vocabularies
too). Requests are checked column by column (:func:`check_columns`, a few µs a row); frames with whole-column
operations (:func:`frame_masks`); ``tests/data/test_contract.py`` holds the two to the same verdicts and
words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from relearn.data.schema import CATEGORICAL_DOMAINS
from relearn.errors import InvalidRequest

AMOUNT_MIN_EXCLUSIVE = 0.0
# Major units, about EUR 50,000 in each currency: one number for all would refuse an ordinary
# SEK 60,000 (EUR 5,500) journey, which the generator's world makes.
AMOUNT_MAX: dict[str, float] = {
    "EUR": 50_000.0,
    "GBP": 50_000.0,
    "USD": 50_000.0,
    "PLN": 200_000.0,
    "SEK": 500_000.0,
}
SHOWN_CHARS = 40  # a bad value is echoed at most this long: a client cannot fill the logs through it


@dataclass(frozen=True)
class Rule:
    """One field's rule.

    ``kind``: ``id`` a non-empty string; ``text`` a string; ``category`` one of ``domain``; ``timestamp``
    ISO-8601 (as pandas parses it); ``amount`` a finite number in (:data:`AMOUNT_MIN_EXCLUSIVE`,
    :data:`AMOUNT_MAX` of the record's currency]. An optional field may be null; None, NaN and "" are null
    (a v2 BYTES tensor cannot carry a null: empty is null).
    """

    field: str
    kind: Literal["id", "text", "category", "timestamp", "amount"]
    required: bool = True
    domain: tuple[str, ...] = ()
    members: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.domain))


# Currency before amount: the amount's upper bound is its currency's.
TRANSACTION: tuple[Rule, ...] = (
    Rule("transaction_id", "id"),
    Rule("event_timestamp", "timestamp"),
    Rule("user_id", "id"),
    Rule("merchant_id", "id"),
    Rule("currency", "category", domain=CATEGORICAL_DOMAINS["currency"]),
    Rule("amount", "amount"),
    Rule("merchant_category", "category", False, CATEGORICAL_DOMAINS["merchant_category"]),
    Rule("channel", "category", False, CATEGORICAL_DOMAINS["channel"]),
    Rule("country", "category", False, CATEGORICAL_DOMAINS["country"]),
    Rule("device_id", "text", False),
)
CHARGEBACK: tuple[Rule, ...] = (
    Rule("transaction_id", "id"),
    Rule("merchant_id", "id"),
    Rule("received_timestamp", "timestamp"),
)


class Violation(InvalidRequest, ValueError):
    """A record breaks the contract: its ``row`` in the batch, the ``field`` and the rule's ``message``."""

    def __init__(self, row: int, field: str, message: str) -> None:
        super().__init__(f"row {row}: {message}")
        self.row, self.field, self.message = row, field, message


def required(rules: Sequence[Rule] = TRANSACTION) -> tuple[str, ...]:
    """The fields a record must have (non-null)."""
    return tuple(r.field for r in rules if r.required)


def is_null(value: Any) -> bool:
    """None, NaN, NaT or ""."""
    if isinstance(value, str):
        return not value
    return value is None or value is pd.NaT or value is pd.NA or (isinstance(value, float) and value != value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def shown(value: Any) -> str:
    """A value as a message quotes it: null, a float, or a shortened repr."""
    if value is None or value is pd.NaT or value is pd.NA:
        return "null"
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_):
        try:
            return repr(float(value))
        except OverflowError:
            pass
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def requirement(rule: Rule, currency: Any = None) -> str:
    """What the rule asks of its field, in words (the amount's depends on the record's currency)."""
    if rule.kind == "amount":
        bound = AMOUNT_MAX.get(currency) if isinstance(currency, str) else None
        top = "" if bound is None else f" and <= {_number(bound)} for currency {currency}"
        return f"a number > {_number(AMOUNT_MIN_EXCLUSIVE)}{top}"
    if rule.kind == "category":
        words = f"one of {', '.join(rule.domain)}"
    else:
        words = {"id": "a non-empty string", "text": "a string", "timestamp": "an ISO-8601 timestamp"}[
            rule.kind
        ]
    return words if rule.required else f"{words} or null"


def message(rule: Rule, value: Any, currency: Any = None) -> str:
    """The words of a violation, the same for every consumer."""
    return f"field '{rule.field}' must be {requirement(rule, currency)} (got {shown(value)})"


_EPOCH, _ONE_US = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
_MIN_US, _MAX_US = pd.Timestamp.min.value // 1000 + 1, pd.Timestamp.max.value // 1000  # pandas' range


def _us(moment: datetime) -> int | None:
    us = (moment - _EPOCH) // _ONE_US
    return us if _MIN_US <= us <= _MAX_US else None


def epoch_us(value: Any) -> int | None:
    """An ISO-8601 timestamp string or a datetime (naive = UTC) as epoch µs; None if it is neither.

    Calendar dates (``YYYY-MM-DD[T ]...``) take ``datetime.fromisoformat`` (a few µs); other strings go to
    the pandas parser the pipeline uses, so both accept the same strings.
    """
    if isinstance(value, datetime) and value is not pd.NaT:
        return _us(value if value.tzinfo else value.replace(tzinfo=UTC))
    if not isinstance(value, str):
        return None
    if len(value) >= 10 and value[4] == value[7] == "-" and value[10:11] in "T ":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None  # pandas decides
        if moment is not None:
            return _us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    stamp = pd.to_datetime(pd.Series([value], dtype=object), utc=True, errors="coerce", format="ISO8601")
    return None if stamp.isna().iloc[0] else int(stamp.dt.as_unit("us").array.asi8[0])


def _amount(value: Any, currency: Any) -> float | None:
    """The amount as a float if the rule holds, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer):
        return None
    try:
        amount = float(value)
    except OverflowError:
        return None
    bound = AMOUNT_MAX.get(currency, math.inf) if isinstance(currency, str) else math.inf
    return amount if math.isfinite(amount) and AMOUNT_MIN_EXCLUSIVE < amount <= bound else None


def holds(rule: Rule, value: Any) -> bool:
    """Whether a text, id or category value keeps its rule."""
    if is_null(value):
        return not rule.required
    if rule.kind == "category":
        return isinstance(value, str) and value in rule.members
    return isinstance(value, str)


def check_columns(
    columns: Mapping[str, Sequence[Any]], n: int, rules: Sequence[Rule] = TRANSACTION
) -> dict[str, list]:
    """Check ``n`` records given column by column (a field absent from ``columns`` is null in every row).

    Returns:
        The parsed columns: timestamps as epoch µs, amounts as float, text as str ("" for null).

    Raises:
        Violation: the first bad value, rules in order.
    """
    nulls: Sequence[Any] = [None] * n
    out: dict[str, list] = {}
    for rule in rules:
        values = columns.get(rule.field, nulls)
        if rule.kind == "timestamp":
            parsed: list = [epoch_us(v) for v in values]
        elif rule.kind == "amount":
            parsed = [_amount(v, c) for v, c in zip(values, out.get("currency", nulls), strict=True)]
        else:
            bad = next((i for i, v in enumerate(values) if not holds(rule, v)), None)
            if bad is not None:
                raise Violation(bad, rule.field, message(rule, values[bad]))
            parsed = ["" if is_null(v) else v for v in values]
        if None in parsed:
            row = parsed.index(None)
            currency = out.get("currency", nulls)[row]
            raise Violation(row, rule.field, message(rule, values[row], currency))
        out[rule.field] = parsed
    return out


def _timestamp_ok(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return column.notna().to_numpy()
    strings = column.map(lambda v: v if isinstance(v, str | datetime) else None).astype(object)
    parsed = pd.to_datetime(strings, utc=True, errors="coerce", format="ISO8601")
    return parsed.notna().to_numpy()


def _amount_ok(column: pd.Series, currency: pd.Series | None) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column.dtype):
        amount = np.full(len(column), np.nan)
    elif pd.api.types.is_numeric_dtype(column.dtype):
        amount = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        amount = np.array([np.nan if (a := _amount(v, None)) is None else a for v in column.tolist()] or [])
    if currency is None:
        bound = np.full(len(column), np.inf)
    else:
        bound = np.array(
            [AMOUNT_MAX.get(c, np.inf) if isinstance(c, str) else np.inf for c in currency.tolist()]
        )
    with np.errstate(invalid="ignore"):
        return np.isfinite(amount) & (amount > AMOUNT_MIN_EXCLUSIVE) & (amount <= bound)


def frame_mask(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    """The rows of ``frame`` that break ``rule`` (True), whole-column; its field must be a column."""
    column = frame[rule.field]
    if rule.kind == "timestamp":
        ok = _timestamp_ok(column)
    elif rule.kind == "amount":
        ok = _amount_ok(column, frame.get("currency"))
    else:
        ok = np.fromiter((holds(rule, v) for v in column.tolist()), dtype=bool, count=len(column))
    return ~ok


def frame_masks(frame: pd.DataFrame, rules: Sequence[Rule] = TRANSACTION) -> dict[str, np.ndarray]:
    """:func:`frame_mask` of each rule whose field is a column of ``frame``."""
    return {rule.field: frame_mask(frame, rule) for rule in rules if rule.field in frame}


def frame_messages(frame: pd.DataFrame, rule: Rule, rows: Sequence[int]) -> list[str]:
    """``row N: <message>`` for the given positional ``rows`` of ``frame``, which break ``rule``."""
    values, currencies = frame[rule.field], frame.get("currency")
    return [
        f"row {i}: " + message(rule, values.iloc[i], None if currencies is None else currencies.iloc[i])
        for i in rows
    ]


def frame_violations(frame: pd.DataFrame, rules: Sequence[Rule] = TRANSACTION) -> pd.Series:
    """Each row that breaks a rule, with ``row N: <message>`` of its first broken rule (positional index)."""
    masks, first = frame_masks(frame, rules), {}
    for rule in rules:
        if rule.field in masks:
            rows = [int(i) for i in np.flatnonzero(masks[rule.field]) if int(i) not in first]
            first.update(zip(rows, frame_messages(frame, rule, rows), strict=True))
    return pd.Series(first, dtype=object).sort_index()
