"""Named drift scenarios: changes to the simulated world that begin at an onset time.

A scenario only edits rows at or after the onset, or adds rows there, and draws from a random stream of
its own. So for the same seed, everything before the onset is identical to the ``none`` scenario; the
monitoring side can then attribute every difference to the scenario.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from relearn.data.rows import Rows, WorldView, concat, take
from relearn.data.schema import CURRENCIES, FRAUD_PATTERNS, MERCHANT_CATEGORIES

SCENARIOS: dict[str, str] = {
    "none": "No drift: the world stays as it was.",
    "covariate_shift": "Spending moves toward electronics and travel (35 % of purchases); prices rise ×1.5.",
    "concept_drift": "A new fraud pattern, bust_out: known users on their own devices at home run up many "
    "large purchases (electronics, gambling) within one day.",
    "label_shift": "A fraud campaign: card-testing and account-takeover attacks become 5× as frequent.",
    "data_bug_units": "Upstream bug: EUR amounts arrive in cents (×100).",
    "data_bug_nulls": "Upstream bug: merchant_category is null on 30 % of the rows.",
}

UNITS_BUG_CURRENCY = "EUR"
NULLS_BUG_SHARE = 0.3
BUST_OUT_CATEGORIES = {
    "electronics": 0.45,
    "gambling": 0.25,
    "fashion": 0.1,
    "travel": 0.1,
    "cash_withdrawal": 0.1,
}
_CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}


@dataclass
class ScenarioContext:
    """What a scenario needs: the world's sampling primitives, the time span it acts on, its own RNG."""

    world: WorldView
    onset_us: int  # microseconds since the epoch; the scenario acts on [onset_us, end_us)
    end_us: int
    rng: np.random.Generator
    events_per_day: dict[str, float]  # base rate of the burst fraud patterns


def scenario_rng(name: str, seed: int) -> np.random.Generator:
    """The scenario's own random stream, independent of the base world's streams."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), 0x5CE])


def resolve_onset(spec: str | datetime | None, start: datetime, days: int) -> datetime | None:
    """Turn an onset given as a datetime, ``"day N"`` or a window fraction (``"0.5"``) into a UTC datetime.

    Args:
        spec: ISO datetime (naive means UTC), ``"day N"`` (N days after ``start``), or a number in
            [0, 1] (that fraction of the window). None or "" means the default (mid-window).
        start: First instant of the window.
        days: Window length in days.

    Returns:
        The onset, or None for the default.
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text.startswith("day"):
            return start + timedelta(days=float(text[3:]))
        try:
            fraction = float(text)
        except ValueError:
            spec = pd.Timestamp(spec).to_pydatetime()
        else:
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"onset fraction {fraction} is outside [0, 1]")
            return start + timedelta(days=fraction * days)
    return spec.replace(tzinfo=UTC) if spec.tzinfo is None else spec.astimezone(UTC)


def _after(rows: Rows, ctx: ScenarioContext) -> np.ndarray:
    return rows["ts"] >= ctx.onset_us


def _none(rows: Rows, ctx: ScenarioContext) -> Rows:
    return rows


def _covariate_shift(rows: Rows, ctx: ScenarioContext) -> Rows:
    rng, world = ctx.rng, ctx.world
    normal = _after(rows, ctx) & (rows["pattern"] == 0)
    moved = np.flatnonzero(normal & (rng.random(len(normal)) < 0.35))
    cat = np.where(rng.random(len(moved)) < 0.6, _CAT["electronics"], _CAT["travel"])
    user = rows["user"][moved]
    merchant = world.pick_merchant(rng, cat, user)
    rows["category"][moved] = cat
    rows["merchant"][moved] = merchant
    rows["channel"][moved] = world.pick_channel(rng, cat)
    rows["amount"][moved] = world.amounts(rng, cat, merchant, user, rows["currency"][moved])
    rows["amount"][normal] = np.round(rows["amount"][normal] * 1.5, 2)
    return rows


def _concept_drift(rows: Rows, ctx: ScenarioContext) -> Rows:

    rng, world = ctx.rng, ctx.world
    first_day = math.ceil((ctx.onset_us - world.start_us) / 86_400e6)
    n_days = world.config.days - first_day
    if n_days <= 0:
        return rows
    # About 1.5× the base fraud rate of the rows after the onset, ~10 purchases per bust-out. Nothing
    # like it is fraud before the onset (own device, home country), so a champion misses it, yet a model
    # trained on its chargebacks can learn it (a day's burst of large purchases).
    n_after = int(_after(rows, ctx).sum())
    n_users = max(1, round(1.5 * world.config.fraud_rate * n_after / 10))
    sizes = 6 + rng.poisson(4, n_users)
    user = np.repeat(rng.integers(0, world.config.n_users, n_users), sizes)
    day = np.repeat(first_day + rng.integers(0, n_days, n_users), sizes)  # a spree: one day each
    n = len(user)
    cat_p = np.array([BUST_OUT_CATEGORIES.get(c, 0.0) for c in MERCHANT_CATEGORIES])
    cat = rng.choice(len(cat_p), n, p=cat_p / cat_p.sum())
    merchant = world.pick_merchant(rng, cat, None)
    currency = world.user_currency[user]
    # Everything looks like the user's own behaviour: own device, home country, normal hours.
    bust = {
        "ts": world.times(rng, day),
        "user": user,
        "merchant": merchant,
        "amount": world.amounts(rng, cat, merchant, user, currency, scale=2.5),
        "currency": currency,
        "category": cat,
        "channel": world.pick_channel(rng, cat),
        "country": world.user_country[user],
        "device": world.user_device(rng, user),
        "pattern": np.full(n, FRAUD_PATTERNS.index("bust_out")),
        "cb_delay": world.chargeback_delays(rng, n),
    }
    return concat(rows, take(bust, bust["ts"] >= ctx.onset_us))


def _label_shift(rows: Rows, ctx: ScenarioContext) -> Rows:

    days = (ctx.end_us - ctx.onset_us) / 86_400e6
    extra = [
        ctx.world.card_testing(
            ctx.rng, max(1, round(4 * ctx.events_per_day["card_testing"] * days)), ctx.onset_us, ctx.end_us
        ),
        ctx.world.account_takeover(
            ctx.rng,
            max(1, round(4 * ctx.events_per_day["account_takeover"] * days)),
            ctx.onset_us,
            ctx.end_us,
        ),
    ]
    rows = concat(rows, *extra)
    return take(rows, rows["ts"] < ctx.end_us)


def _data_bug_units(rows: Rows, ctx: ScenarioContext) -> Rows:
    hit = _after(rows, ctx) & (rows["currency"] == CURRENCIES.index(UNITS_BUG_CURRENCY))
    rows["amount"][hit] = np.round(rows["amount"][hit] * 100.0, 2)
    return rows


def _data_bug_nulls(rows: Rows, ctx: ScenarioContext) -> Rows:
    hit = _after(rows, ctx) & (ctx.rng.random(len(rows["ts"])) < NULLS_BUG_SHARE)
    rows["category"][hit] = -1  # code -1 becomes None in the output
    return rows


_APPLY: dict[str, Callable[[Rows, ScenarioContext], Rows]] = {
    "none": _none,
    "covariate_shift": _covariate_shift,
    "concept_drift": _concept_drift,
    "label_shift": _label_shift,
    "data_bug_units": _data_bug_units,
    "data_bug_nulls": _data_bug_nulls,
}


def apply_scenario(name: str, rows: Rows, ctx: ScenarioContext) -> Rows:
    """Apply scenario ``name`` to the simulated rows (integer-coded columns), from ``ctx.onset_us`` on.

    Args:
        name: A key of :data:`SCENARIOS`.
        rows: The base world's rows; edited in place where the scenario changes values.
        ctx: Onset, end, the world's sampling primitives and the scenario's RNG.

    Returns:
        The rows, possibly with rows appended after the onset.
    """
    if name not in _APPLY:
        raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    return _APPLY[name](rows, ctx)
