"""Behavioral tests: run the declared suite (:mod:`relearn.model.behavior.suite`) against a model.

Cases are holdout rows. The training set keeps the model inputs, not the raw state they came from, so each
row is first turned back into a *case*: the request and the card's and merchant's state before it (the
previous transaction's time from ``log_seconds_since_last_txn``; a last country / device equal to the
current one unless ``country_changed`` / ``device_changed`` says otherwise; the device named after the card
when the row has none). Rows whose case does not give back their own model inputs through
:func:`~relearn.features.transforms.model_inputs` are left out (``represented`` counts the others), so
every perturbed input is what the feature code computes, never a formula copied here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.features.transforms import epoch_us, model_inputs
from relearn.features.windows import HISTORY_HORIZON, US, mean_std
from relearn.model.behavior.suite import CASE_FIELDS, DOMAINS, BehaviorTest, Step, Suite, load_suite

Predict = Callable[[pd.DataFrame], np.ndarray]  # frame with MODEL_INPUTS (and more) -> fraud scores
SHOWN_CASES = 5  # failing cases kept per test for the report
_HORIZON_S = HISTORY_HORIZON.total_seconds()


def cases_from_holdout(holdout: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cases of the holdout rows that represent them exactly, and their recomputed model inputs."""
    frame = holdout.reset_index(drop=True)
    case = pd.DataFrame({f: frame[f] for f in CASE_FIELDS if f in frame})
    text = {
        c: frame[c].astype(object).where(frame[c].notna(), "").astype(str) for c in ("country", "user_id")
    }
    since = np.expm1(frame["log_seconds_since_last_txn"].to_numpy(np.float64))
    recent = since < _HORIZON_S * (1 - 1e-6)
    now = epoch_us(frame["event_timestamp"]) / US
    case["user_last_txn_unix"] = np.where(recent, now - since, np.nan)
    if "device_id" not in frame:
        case["device_id"] = "device-" + text["user_id"]
    device = case["device_id"].astype(object).where(case["device_id"].notna(), "").astype(str)
    countries = list(DOMAINS["country"])
    elsewhere = text["country"].map(
        lambda c: countries[(countries.index(c) + 1) % len(countries)] if c in countries else "XX"
    )
    changed = frame["country_changed"].to_numpy() > 0.5
    case["user_last_country"] = np.where(recent, np.where(changed, elsewhere, text["country"]), "")
    changed = frame["device_changed"].to_numpy() > 0.5
    case["user_last_device"] = np.where(recent, np.where(changed, device + "-before", device), "")
    inputs = model_inputs(case)
    same = np.isclose(
        inputs[list(NUMERIC_INPUTS)].to_numpy(np.float64),
        frame[list(NUMERIC_INPUTS)].to_numpy(np.float64),
        rtol=1e-4,
        atol=1e-4,
    ).all(axis=1)
    for name in CATEGORICAL_INPUTS:
        same &= inputs[name].to_numpy() == frame[name].astype(object).where(frame[name].notna(), "").astype(
            str
        )
    return case[same].reset_index(drop=True), inputs[same].reset_index(drop=True)


def scoring_frame(case: pd.DataFrame) -> pd.DataFrame:
    """What the model is given: the model inputs of ``case`` plus every other field of it.

    Ids, the label and the ground truth are passed along, so a model reading a field it must ignore is caught.
    """
    inputs = model_inputs(case)
    return pd.concat([inputs, case[[c for c in case if c not in inputs]]], axis=1)


def _fresh_ids(values: pd.Series, rng: np.random.Generator, mapping: dict[Any, str]) -> pd.Series:
    for old in pd.unique(values):
        if old not in mapping and old not in ("", None) and not (isinstance(old, float) and np.isnan(old)):
            mapping[old] = f"id-{rng.integers(2**62):016x}"
    return values.map(lambda v: mapping.get(v, v))


def _recent(case: pd.DataFrame, count: int, seconds_ago: float, amount: str) -> None:
    """``count`` more card transactions in the last hour: the windows' count, centred sums and last event."""
    n = case["user_txn_count_7d"].to_numpy(np.float64)
    mean, std = (case[f].to_numpy(np.float64) for f in ("user_amount_mean_7d", "user_amount_std_7d"))
    this = pd.to_numeric(case["amount"], errors="coerce").to_numpy(np.float64)
    centre = np.where(n > 0, mean, this)
    added = np.nan_to_num(this - centre) if amount == "this" else np.zeros(len(case))
    ss = std**2 * np.maximum(n - 1, 0) + count * added**2  # sums of (x - centre) and its square
    case["user_amount_mean_7d"], case["user_amount_std_7d"] = mean_std(n + count, count * added, ss, centre)
    for name in ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d"):
        case[name] = case[name].to_numpy(np.float64) + count
    latest = epoch_us(case["event_timestamp"]) / US - seconds_ago
    case["user_last_txn_unix"] = np.fmax(case["user_last_txn_unix"].to_numpy(np.float64), latest)
    for last, field in (("user_last_country", "country"), ("user_last_device", "device_id")):
        case[last] = case[last].where(case[last].astype(str) != "", case[field])


def perturb(case: pd.DataFrame, steps: list[Step], rng: np.random.Generator) -> pd.DataFrame:
    """A copy of ``case`` with ``steps`` applied in order (see ``suite.yaml`` for what each does)."""
    out = case.copy()
    for step in steps:
        if step.set:
            for field, value in step.set.items():
                out[field] = value
        for field, factor in (step.scale or {}).items():
            out[field] = pd.to_numeric(out[field]) * factor
        for field, delta in (step.add or {}).items():
            out[field] = pd.to_numeric(out[field]) + delta
        for field, source in (step.copy_from or {}).items():
            out[field] = out[source].to_numpy()
        mapping: dict[Any, str] = {}
        for field in step.new_ids or ():
            out[field] = _fresh_ids(out[field], rng, mapping)
        for field in step.other_value or ():
            domain = np.array(DOMAINS[field], dtype=object)
            pick = domain[rng.integers(0, len(domain) - 1, len(out))]
            # Shifting a draw from all but the last value past the current one never lands on it.
            current = out[field].astype(str).to_numpy()
            out[field] = np.where(pick == current, domain[-1], pick)
        if step.utc_offset:
            offset = pd.Timedelta(
                hours=int(step.utc_offset[:3]), minutes=int(step.utc_offset[0] + step.utc_offset[4:])
            )
            local = pd.to_datetime(out["event_timestamp"], utc=True) + offset
            out["event_timestamp"] = local.dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + step.utc_offset
        for field in step.as_text or ():
            out[field] = pd.to_numeric(out[field]).map(lambda v: f"{v:.17g}")
        if step.recent_transactions:
            r = step.recent_transactions
            _recent(out, r.count, r.seconds_ago, r.amount)
    return out


def _select(case: pd.DataFrame, inputs: pd.DataFrame, test: BehaviorTest) -> np.ndarray:
    """Indices of the rows matching the test's ``where``."""
    keep = np.ones(len(case), dtype=bool)
    for field, cond in test.where.items():
        column = inputs[field] if field in inputs else case[field]
        if hasattr(cond, "min"):
            values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
            keep &= (values >= cond.min) if cond.min is not None else True
            keep &= (values <= cond.max) if cond.max is not None else True
        elif isinstance(cond, str):
            keep &= column.astype(str).to_numpy() == cond
        else:
            keep &= pd.to_numeric(column, errors="coerce").to_numpy(np.float64) == float(cond)
    return np.flatnonzero(keep)


def _fails(test: BehaviorTest, before: np.ndarray, after: np.ndarray, threshold: float) -> np.ndarray:
    if test.kind == "invariance":
        return np.abs(after - before) > test.tolerance
    if test.kind == "directional":
        return after < before - test.tolerance if test.direction == "up" else after > before + test.tolerance
    return after < threshold if test.expect == "flagged" else after >= threshold


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.0f}" if abs(value) >= 1e6 else f"{value:.6g}"  # epoch seconds in full
    return str(value)


def describe_change(before: pd.Series, after: pd.Series, names: list[str]) -> str:
    """``field a -> b`` for every field in ``names`` that differs (ids shortened)."""
    parts = []
    for name in names:
        a, b = _fmt(before.get(name)), _fmt(after.get(name))
        if a != b:
            parts.append(f"{name} {a} -> {b}")
    return "; ".join(parts)


def run_test(
    test: BehaviorTest, suite: Suite, case: pd.DataFrame, inputs: pd.DataFrame, base: np.ndarray,
    predict: Predict, threshold: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """One test on its sampled cases: failure rate and the first failing cases, readably."""
    rng = np.random.default_rng([seed, zlib.crc32(test.name.encode())])  # adding a test changes no other
    eligible = _select(case, inputs, test)
    rows = np.sort(rng.choice(eligible, min(suite.cases(test), len(eligible)), replace=False))
    result: dict[str, Any] = {
        "kind": test.kind, "about": test.about, "cases": len(rows), "eligible": len(eligible),
        "tolerance": test.tolerance if test.kind != "min_functionality" else None,
        "expect": test.expect or test.direction or "unchanged", "max_failure_rate": test.max_failure_rate,
        "failures": 0, "failure_rate": None, "failing": [],
    }  # fmt: skip
    if not len(rows):
        return result
    original = case.iloc[rows].reset_index(drop=True)
    changed = perturb(original, test.perturb, rng)
    after = np.asarray(predict(scoring_frame(changed)), dtype=np.float64)
    before = base[rows]
    failed = _fails(test, before, after, threshold)
    result |= {"failures": int(failed.sum()), "failure_rate": float(failed.mean())}
    inputs_after = model_inputs(changed)
    for i in np.flatnonzero(failed)[:SHOWN_CASES]:
        result["failing"].append(
            {
                "transaction_id": str(original.at[i, "transaction_id"])
                if "transaction_id" in original
                else str(i),
                "score": float(before[i]),
                "perturbed_score": float(after[i]),
                "changed": describe_change(original.iloc[i], changed.iloc[i], list(original.columns)),
                "inputs": describe_change(inputs.iloc[rows[i]], inputs_after.iloc[i], list(MODEL_INPUTS)),
            }
        )
    return result


def run_suite(
    predict: Predict,
    holdout: pd.DataFrame,
    threshold: float,
    suite: Suite | str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run every test of ``suite`` (default: the packaged one) on cases drawn from ``holdout``.

    Args:
        predict: Scores of a frame holding ``MODEL_INPUTS`` (other columns are passed along too).
        holdout: Training-set rows (``MODEL_INPUTS``, ``amount``, ``event_timestamp``, ids, label).
        threshold: The decision threshold (``flag = score >= threshold``) for minimum-functionality tests.
        suite: A loaded suite or the path of a suite file; default the packaged ``suite.yaml``.
        seed: Seed of the case sampling and of the random values of perturbations.

    Returns:
        ``suite`` (its source), ``seed``, ``threshold``, ``rows`` and ``represented`` (holdout rows usable as
        cases), and ``tests``: name -> kind, about, cases, failures, failure_rate (None without cases),
        max_failure_rate (None: the gate's default), tolerance, expect and up to five ``failing`` cases
        (transaction, scores, the fields and the model inputs that changed).
    """
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    case, inputs = cases_from_holdout(holdout)
    base = np.asarray(predict(scoring_frame(case)), dtype=np.float64) if len(case) else np.zeros(0)
    tests = {t.name: run_test(t, suite, case, inputs, base, predict, threshold, seed) for t in suite.tests}
    return {
        "suite": suite.source,
        "seed": seed,
        "threshold": threshold,
        "rows": len(holdout),
        "represented": len(case),
        "tests": tests,
    }
