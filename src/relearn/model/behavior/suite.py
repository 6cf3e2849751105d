"""Schema of a behavioral suite file, and its loader (errors name the entry at fault).

A suite is a YAML mapping: ``version: 1``, optional ``defaults`` (``cases``) and a list of ``tests``. Each
test takes ``cases`` holdout rows (seeded) matching ``where``, applies its ``perturb`` steps to the
transaction and the card's and merchant's state, recomputes the model inputs with
:func:`relearn.features.transforms.model_inputs` and checks the scores:

* ``invariance``: ``|perturbed - original| <= tolerance``;
* ``directional``: ``direction: up`` (must not lower: ``perturbed >= original - tolerance``) or ``down``;
* ``min_functionality``: ``expect: flagged`` (``perturbed >= threshold``, the decision threshold at the
  alert budget) or ``not_flagged``.

A case fails when its check does not hold; a test fails the gate when its failure rate exceeds its own
``max_failure_rate`` (or the gate's default). See ``suite.yaml`` for every step and filter in use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from relearn.data import schema
from relearn.data.schema import CATEGORICAL_DOMAINS
from relearn.errors import InvalidRequest
from relearn.features.spec import LABEL, MERCHANT_FEATURES, MODEL_INPUTS, USER_FEATURES

# What a case is made of: the request, the card's and merchant's state before it, and the fields a model
# must ignore (ids, the label and the generator's ground truth).
ID_FIELDS = ("transaction_id", "user_id", "merchant_id")
REQUEST_FIELDS = tuple(f for f in schema.REQUEST_FIELDS if f not in ID_FIELDS)
IGNORED_FIELDS = ("is_fraud", "fraud_pattern", LABEL)
CASE_FIELDS = (*ID_FIELDS, *REQUEST_FIELDS, *USER_FEATURES, *MERCHANT_FEATURES, *IGNORED_FIELDS)
NUMERIC_FIELDS = ("amount", *(f for f in (*USER_FEATURES, *MERCHANT_FEATURES) if "last_c" not in f
                              and "last_d" not in f))  # fmt: skip
# Value domains of the text fields ``other_value`` draws from.
DOMAINS = {**CATEGORICAL_DOMAINS, "user_last_country": CATEGORICAL_DOMAINS["country"]}
FILTER_FIELDS = frozenset(CASE_FIELDS) | frozenset(MODEL_INPUTS)

SUITE = "suite.yaml"


class SuiteError(InvalidRequest, ValueError):
    """A suite file that cannot be used; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known(fields: Any, allowed: tuple[str, ...] | frozenset[str], what: str) -> None:
    names = list(fields) if isinstance(fields, dict | list | tuple) else [fields]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}")


class RecentTransactions(_Strict):
    """More transactions of the card in the last hour.

    ``count`` of them, the last one ``seconds_ago`` before this one, each at the card's 7-day mean amount
    (``amount: mean``) or at this transaction's amount (``amount: this``).
    """

    count: int = Field(ge=1)
    seconds_ago: float = Field(gt=0, lt=3600)
    amount: Literal["mean", "this"] = "mean"


class Step(_Strict):
    """One perturbation step: exactly one of the keys below."""

    set: dict[str, Any] | None = None  # field: value
    scale: dict[str, float] | None = None  # numeric field: factor
    add: dict[str, float] | None = None  # numeric field: delta
    copy_from: dict[str, str] | None = Field(None, alias="copy")  # field: field whose value it takes
    new_ids: list[str] | None = None  # fresh ids; one old value gets one new value across the fields
    other_value: list[str] | None = None  # another value of the field's domain (e.g. another country)
    utc_offset: str | None = Field(None, pattern=r"^[+-]\d\d:\d\d$")  # event time as text at this offset
    as_text: list[str] | None = None  # numeric fields sent as text
    recent_transactions: RecentTransactions | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(f"a perturb step has exactly one key, got {given or 'none'}")
        numeric = (self.scale, self.add, self.as_text)
        for fields in numeric:
            if fields is not None:
                _known(fields, NUMERIC_FIELDS, "numeric field")
        for fields in (self.set, self.new_ids, *([self.copy_from] if self.copy_from else [])):
            if fields is not None:
                _known(fields, CASE_FIELDS, "field")
        if self.copy_from:
            _known(list(self.copy_from.values()), CASE_FIELDS, "field")
        if self.other_value is not None:
            _known(self.other_value, tuple(DOMAINS), "field with a domain")
        return self

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Bounds(_Strict):
    """A numeric filter: ``min <= value <= max`` (either may be left out)."""

    min: float | None = None
    max: float | None = None


class BehaviorTest(_Strict):
    """One declared test; see the module docstring."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    kind: Literal["invariance", "directional", "min_functionality"]
    about: str = Field(min_length=1, description="What the test checks and why, for the report.")
    where: dict[str, Bounds | str | float | bool] = Field(default_factory=dict)
    perturb: list[Step] = Field(min_length=1)
    cases: int | None = Field(None, ge=1)
    tolerance: float = Field(1e-6, ge=0, description="Score change allowed (invariance, directional).")
    direction: Literal["up", "down"] | None = None
    expect: Literal["flagged", "not_flagged"] | None = None
    max_failure_rate: float | None = Field(None, ge=0, le=1)

    @field_validator("where")
    @classmethod
    def _filters(cls, value: dict[str, Any]) -> dict[str, Any]:
        _known(value, FILTER_FIELDS, "filter field")
        return value

    @model_validator(mode="after")
    def _kind(self) -> BehaviorTest:
        if (self.kind == "directional") != (self.direction is not None):
            raise ValueError("`direction` (up or down) is for directional tests, and required there")
        if (self.kind == "min_functionality") != (self.expect is not None):
            raise ValueError("`expect` (flagged or not_flagged) is for min_functionality tests, and required")
        return self


class Suite(_Strict):
    """A loaded suite: its tests and where it came from."""

    version: Literal[1]
    defaults: dict[Literal["cases"], int] = Field(default_factory=lambda: {"cases": 200})
    tests: list[BehaviorTest] = Field(min_length=1)
    source: str = ""

    def cases(self, test: BehaviorTest) -> int:
        """How many cases ``test`` draws."""
        return test.cases or self.defaults.get("cases", 200)


def _entry_error(source: str, exc: ValidationError, entries: list[Any]) -> SuiteError:
    """The first error, naming the test (index and name) and the path inside it."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = ".".join(str(p) for p in loc)
    if len(loc) >= 2 and loc[0] == "tests" and isinstance(loc[1], int) and loc[1] < len(entries):
        entry = entries[loc[1]]
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
        where = f"tests[{loc[1]}] ({name!s})" + "".join(f".{p}" for p in loc[2:])
    return SuiteError(f"{source}: {where}: {err['msg']}")


def load_suite(path: str | Path | None = None) -> Suite:
    """The suite at ``path``, or the packaged ``suite.yaml``; :class:`SuiteError` names a bad entry."""
    if path is None:
        source, text = (
            f"relearn.model.behavior/{SUITE}",
            resources.files(__package__).joinpath(SUITE).read_text(),
        )
    else:
        source, text = str(path), Path(path).read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{source}: not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: a suite is a mapping with `version` and `tests`")
    entries = raw.get("tests") if isinstance(raw.get("tests"), list) else []
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SuiteError(f"{source}: test names must be unique: {', '.join(map(str, duplicates))}")
    try:
        return Suite.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise _entry_error(source, exc, entries) from None
