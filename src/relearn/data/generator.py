"""Synthetic card transactions: users, merchants, seasonality, three fraud patterns and delayed chargebacks.

Everything is vectorised with numpy (no Python loop per transaction): per-user daily counts are Poisson
draws, times of day come from an hourly profile, and categorical choices use one ``searchsorted`` over
row-wise cumulative probabilities. Rows are held as integer codes until the very end, where they become
a DataFrame that conforms to :data:`~relearn.data.schema.TRANSACTION_SCHEMA`.

Determinism: every stage draws from its own child of ``SeedSequence(seed)`` and the scenario from a
stream of its own, so a scenario can never change what happens before its onset.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from relearn.data import cardholders, scenarios
from relearn.data.frames import mix64, to_frames
from relearn.data.generator_config import GeneratedData, GeneratorConfig
from relearn.data.rows import Rows, concat, take
from relearn.data.schema import (
    COUNTRIES,
    MERCHANT_CATEGORIES,
)
from relearn.data.world_params import (
    ACCOUNT_TAKEOVER_MEAN_BURST,
    ATO_CATEGORIES,
    ATTACKER_COUNTRY_P,
    CARD_TESTING_MEAN_BURST,
    CAT,
    CAT_CHANNELS,
    CAT_MEDIAN,
    CAT_SHARE,
    CAT_SIGMA,
    CH,
    COMPROMISED_CATEGORIES,
    COMPROMISED_MAX_SHARE,
    CUR,
    DAY_OF_WEEK_VOLUME,
    DAY_US,
    FRAUD_MIX,
    FX,
    HOME_COUNTRY_P,
    HOME_CURRENCY,
    HOUR_P,
    HOUR_US,
    PATTERN,
    TRAVEL_COUNTRY_P,
)

log = logging.getLogger("relearn.data.generator")


def choose(probs: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample one column of ``probs[rows[i]]`` per i with uniforms ``u``, vectorised.

    Row r's cumulative probabilities are shifted by r and flattened, so a single ``searchsorted`` for
    ``r + u`` is the inverse-CDF draw within row r. Rows need not be normalised.
    """
    k = probs.shape[1]
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    flat = (cum + np.arange(len(probs))[:, None]).ravel()
    col = np.searchsorted(flat, rows + u, side="right") - rows * k
    return np.clip(col, 0, k - 1)


def _p(weights: dict[str, float], domain: tuple[str, ...]) -> np.ndarray:
    """A probability vector over ``domain`` from a sparse ``name -> weight`` dict."""
    p = np.array([weights.get(x, 0.0) for x in domain], dtype=float)
    return p / p.sum()


class World:
    """The simulated population (users, merchants) and the primitives that sample rows from it.

    Scenarios use these primitives too, so drifted rows look like the rest of the world.
    """

    def __init__(self, config: GeneratorConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.start_us = int(pd.Timestamp(config.start).value // 1000)
        self.end_us = self.start_us + config.days * DAY_US
        self.start_weekday = config.start.weekday()
        n_u, n_m, n_c = config.n_users, config.n_merchants, len(MERCHANT_CATEGORIES)

        # Users: home country; card currency mostly the home one; 1-2 devices; spend level;
        # preferred categories (Dirichlet around the population mix); activity rate (Gamma, shape 2).
        self.user_country = rng.choice(len(COUNTRIES), n_u, p=HOME_COUNTRY_P / HOME_COUNTRY_P.sum())
        home_cur = np.array([CUR[HOME_CURRENCY.get(c, "USD")] for c in COUNTRIES])[self.user_country]
        other_cur = np.where(home_cur == CUR["EUR"], CUR["USD"], CUR["EUR"])
        self.user_currency = np.where(rng.random(n_u) < 0.95, home_cur, other_cur)
        self.user_two_devices = rng.random(n_u) < 0.4
        self.user_spend = rng.lognormal(0.0, 0.4, n_u)
        self.user_cat_p = rng.dirichlet(8.0 * CAT_SHARE / CAT_SHARE.sum(), n_u) + 1e-12
        self.user_rate = rng.gamma(2.0, config.mean_daily_transactions / 2.0, n_u)

        # Merchants: one per category first (every category exists), then by category share;
        # popularity is heavy-tailed; price level scatters around the category median.
        self.merchant_cat = np.concatenate(
            [np.arange(n_c), rng.choice(n_c, n_m - n_c, p=CAT_SHARE / CAT_SHARE.sum())]
        )
        self.merchant_pop = rng.lognormal(0.0, 1.0, n_m)
        self.merchant_price = rng.lognormal(0.0, 0.3, n_m)
        self.cat_merchant_p = np.zeros((n_c, n_m))
        self.cat_merchant_p[self.merchant_cat, np.arange(n_m)] = self.merchant_pop
        # Merchants grouped by category, for picking a user's favourite merchant in a category.
        self.by_cat = np.argsort(self.merchant_cat, kind="stable")
        self.cat_count = np.bincount(self.merchant_cat, minlength=n_c)
        self.cat_offset = np.concatenate([[0], np.cumsum(self.cat_count)[:-1]])
        self.n_attacker_devices = 0  # attacker devices get codes after all users' devices

    # --- primitives -----------------------------------------------------------------------------------
    def pick_merchant(self, rng: np.random.Generator, cat: np.ndarray, user: np.ndarray | None) -> np.ndarray:
        """A merchant of category ``cat``: the user's favourite one 60 % of the time, else by popularity."""
        merchant = choose(self.cat_merchant_p, cat, rng.random(len(cat)))
        if user is not None:
            # The favourite is a fixed hash of (user, category), so it is the same merchant every time.
            h = mix64(
                user.astype(np.uint64) * np.uint64(64) + cat.astype(np.uint64) + np.uint64(self.config.seed)
            )
            fav = self.by_cat[
                self.cat_offset[cat] + (h % self.cat_count[cat].astype(np.uint64)).astype(np.int64)
            ]
            merchant = np.where(rng.random(len(cat)) < 0.6, fav, merchant)
        return merchant

    def pick_channel(self, rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
        """A channel from the category's channel mix."""
        return choose(CAT_CHANNELS, cat, rng.random(len(cat)))

    def amounts(
        self,
        rng: np.random.Generator,
        cat: np.ndarray,
        merchant: np.ndarray,
        user: np.ndarray,
        currency: np.ndarray,
        scale: float | np.ndarray = 1.0,
    ) -> np.ndarray:
        """Lognormal amounts around category median × merchant price level × user spend, in ``currency``."""
        eur = CAT_MEDIAN[cat] * self.merchant_price[merchant] * self.user_spend[user] * scale
        eur = np.minimum(eur * rng.lognormal(0.0, CAT_SIGMA[cat]), 15_000.0)
        amount = eur * FX[currency]
        # ATMs dispense round sums.
        atm = cat == CAT["cash_withdrawal"]
        amount[atm] = np.maximum(np.round(amount[atm] / 10.0) * 10.0, 10.0)
        return np.round(amount, 2)

    def times(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """Timestamps (us) on day index ``day``, hour drawn from the weekday or weekend profile."""
        weekend = ((self.start_weekday + day) % 7 >= 5).astype(np.int64)
        hour = choose(HOUR_P, weekend, rng.random(len(day)))
        within = (rng.random(len(day)) * HOUR_US).astype(np.int64)
        return self.start_us + day * DAY_US + hour * HOUR_US + within

    def chargeback_delays(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Delay (us) until the chargeback of a fraud row, or -1 for the ones never charged back."""
        c = self.config
        days = rng.lognormal(np.log(c.chargeback_median_days), c.chargeback_sigma, n)
        delay = (np.clip(days, 1.0, c.chargeback_max_days) * DAY_US).astype(np.int64)
        return np.where(rng.random(n) < c.chargeback_probability, delay, -1)

    def new_attacker_devices(self, n: int) -> np.ndarray:
        """Fresh device codes for fraudsters, distinct from every user's devices."""
        codes = 2 * self.config.n_users + self.n_attacker_devices + np.arange(n)
        self.n_attacker_devices += n
        return codes

    def user_device(self, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
        """One of the user's own devices (the second one, if any, 30 % of the time)."""
        second = self.user_two_devices[user] & (rng.random(len(user)) < 0.3)
        return 2 * user + second

    # --- row generators -------------------------------------------------------------------------------
    def normal_rows(self, rng: np.random.Generator) -> Rows:
        """Everyday spending: Poisson counts per user and day, modulated by the day of the week."""
        days = np.arange(self.config.days)
        dow = DAY_OF_WEEK_VOLUME[(self.start_weekday + days) % 7]
        counts = rng.poisson(self.user_rate[:, None] * dow[None, :])  # users × days
        user = np.repeat(np.arange(self.config.n_users), counts.sum(axis=1))
        day = np.repeat(np.tile(days, self.config.n_users), counts.ravel())
        n = len(user)
        cat = choose(self.user_cat_p, user, rng.random(n))
        merchant = self.pick_merchant(rng, cat, user)
        currency = self.user_currency[user]
        country = self.user_country[user]
        travel = np.flatnonzero(rng.random(n) < 0.03)  # abroad, but still the user's own card and device
        country[travel] = rng.choice(len(COUNTRIES), len(travel), p=TRAVEL_COUNTRY_P / TRAVEL_COUNTRY_P.sum())
        return {
            "ts": self.times(rng, day),
            "user": user,
            "merchant": merchant,
            "amount": self.amounts(rng, cat, merchant, user, currency),
            "currency": currency,
            "category": cat,
            "channel": self.pick_channel(rng, cat),
            "country": country,
            "device": self.user_device(rng, user),
            "pattern": np.zeros(n, dtype=np.int64),
            "cb_delay": np.full(n, -1, dtype=np.int64),
        }

    def _bursts(
        self, rng: np.random.Generator, n_events: int, lo_us: int, hi_us: int, sizes: np.ndarray, gap_s: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expand events into rows: returns (event index per row, timestamp per row, per-event victim)."""
        event = np.repeat(np.arange(n_events), sizes)
        t0 = rng.integers(lo_us, max(hi_us, lo_us + 1), n_events)
        gaps = (rng.exponential(gap_s, len(event)) * 1e6).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gaps[first] = 0  # the first attempt happens at the event's start (sizes are >= 1)
        offsets = np.cumsum(gaps)
        offsets -= np.repeat(offsets[first], sizes)  # cumulative sum within each event
        victim = rng.integers(0, self.config.n_users, n_events)
        return event, t0[event] + offsets, victim

    def card_testing(self, rng: np.random.Generator, n_events: int, lo_us: int, hi_us: int) -> Rows:
        """Bursts of tiny online purchases seconds apart, on a stolen card, from an attacker's device."""
        sizes = 3 + rng.poisson(CARD_TESTING_MEAN_BURST - 3, n_events)
        event, ts, victim = self._bursts(rng, n_events, lo_us, hi_us, sizes, gap_s=40.0)
        n = len(event)
        user = victim[event]
        cat = np.where(rng.random(n_events) < 0.8, CAT["digital_goods"], CAT["gambling"])[event]
        currency = self.user_currency[user]
        where = rng.choice(len(COUNTRIES), n_events, p=ATTACKER_COUNTRY_P / ATTACKER_COUNTRY_P.sum())
        return {
            "ts": ts,
            "user": user,
            "merchant": self.pick_merchant(rng, cat, None),
            "amount": np.round(rng.uniform(0.5, 5.0, n) * FX[currency], 2),
            "currency": currency,
            "category": cat,
            "channel": np.full(n, CH["ecommerce"]),
            "country": where[event],
            "device": self.new_attacker_devices(n_events)[event],
            "pattern": np.full(n, PATTERN["card_testing"]),
            "cb_delay": self.chargeback_delays(rng, n),
        }

    def account_takeover(self, rng: np.random.Generator, n_events: int, lo_us: int, hi_us: int) -> Rows:
        """A few large online purchases within an hour, from a new device in a foreign country."""
        sizes = 2 + rng.poisson(ACCOUNT_TAKEOVER_MEAN_BURST - 2, n_events)
        event, ts, victim = self._bursts(rng, n_events, lo_us, hi_us, sizes, gap_s=600.0)
        n = len(event)
        user = victim[event]
        cat_p = _p(ATO_CATEGORIES, MERCHANT_CATEGORIES)
        cat = rng.choice(len(MERCHANT_CATEGORIES), n, p=cat_p)
        merchant = self.pick_merchant(rng, cat, None)
        currency = self.user_currency[user]
        where = rng.choice(len(COUNTRIES), n_events, p=ATTACKER_COUNTRY_P / ATTACKER_COUNTRY_P.sum())
        # Never the victim's home country: move to the next attacker country instead.
        attacker_countries = np.flatnonzero(ATTACKER_COUNTRY_P)
        at_home = where == self.user_country[victim]
        pos = np.searchsorted(attacker_countries, where[at_home])
        where[at_home] = attacker_countries[(pos + 1) % len(attacker_countries)]
        return {
            "ts": ts,
            "user": user,
            "merchant": merchant,
            "amount": self.amounts(
                rng, cat, merchant, user, currency, scale=rng.lognormal(np.log(3.0), 0.4, n)
            ),
            "currency": currency,
            "category": cat,
            "channel": np.full(n, CH["ecommerce"]),
            "country": where[event],
            "device": self.new_attacker_devices(n_events)[event],
            "pattern": np.full(n, PATTERN["account_takeover"]),
            "cb_delay": self.chargeback_delays(rng, n),
        }

    def compromise_merchants(self, rng: np.random.Generator, rows: Rows, target: int) -> None:
        """Turn ~``target`` normal rows at a few compromised merchants fraudulent, in place.

        Each candidate merchant gets a 5-14 day compromise window; merchants are taken in random order
        until their in-window traffic can hold the target at <= 30 % fraud, and the share is then set so
        the expected number of fraud rows is the target. Stolen card data is charged for more than usual.
        """
        n_m = self.config.n_merchants
        eligible = np.isin(self.merchant_cat, [CAT[c] for c in COMPROMISED_CATEGORIES])
        length = rng.integers(5, 15, n_m) * DAY_US
        begin = rng.integers(self.start_us, max(self.end_us - length.min(), self.start_us + 1), n_m)
        m = rows["merchant"]
        in_window = (rows["ts"] >= begin[m]) & (rows["ts"] < begin[m] + length[m]) & (rows["pattern"] == 0)
        traffic = np.bincount(m[in_window], minlength=n_m)
        order = rng.permutation(np.flatnonzero(eligible))
        cum = np.cumsum(traffic[order])
        k = int(np.searchsorted(cum, target / COMPROMISED_MAX_SHARE)) + 1
        chosen = np.zeros(n_m, dtype=bool)
        chosen[order[:k]] = True
        share = min(COMPROMISED_MAX_SHARE, target / max(int(cum[min(k, len(cum)) - 1]), 1))
        hit = np.flatnonzero(in_window & chosen[m] & (rng.random(len(m)) < share))
        rows["pattern"][hit] = PATTERN["compromised_merchant"]
        rows["amount"][hit] = np.round(rows["amount"][hit] * rng.uniform(1.5, 3.0, len(hit)), 2)
        rows["cb_delay"][hit] = self.chargeback_delays(rng, len(hit))


def generate(config: GeneratorConfig | None = None) -> GeneratedData:
    """Simulate ``config.days`` days of card transactions and their chargebacks.

    Args:
        config: What to simulate; defaults to :class:`GeneratorConfig` () (~175k transactions).

    Returns:
        Transactions and labels, sorted by event / chargeback time.
    """
    config = config or GeneratorConfig()
    # The card holders' stream is spawned last: the first four, and the transactions, do not depend on it.
    world_ss, normal_ss, fraud_ss, merchant_ss, holder_ss = np.random.SeedSequence(config.seed).spawn(5)
    world = World(config, np.random.default_rng(world_ss))
    rows = world.normal_rows(np.random.default_rng(normal_ss))

    # Fraud rows so that fraud / all ≈ fraud_rate; compromised-merchant fraud replaces normal rows,
    # the bursts add rows.
    n_normal = len(rows["ts"])
    added = FRAUD_MIX["card_testing"] + FRAUD_MIX["account_takeover"]
    n_fraud = config.fraud_rate * n_normal / (1 - config.fraud_rate * added)
    fraud_rng = np.random.default_rng(fraud_ss)
    n_ct = max(1, round(FRAUD_MIX["card_testing"] * n_fraud / CARD_TESTING_MEAN_BURST))
    n_ato = max(1, round(FRAUD_MIX["account_takeover"] * n_fraud / ACCOUNT_TAKEOVER_MEAN_BURST))
    ct = world.card_testing(fraud_rng, n_ct, world.start_us, world.end_us)
    ato = world.account_takeover(fraud_rng, n_ato, world.start_us, world.end_us)
    world.compromise_merchants(
        np.random.default_rng(merchant_ss), rows, round(FRAUD_MIX["compromised_merchant"] * n_fraud)
    )
    rows = concat(rows, ct, ato)
    rows = take(rows, rows["ts"] < world.end_us)  # bursts that began late may spill over the end

    onset_us = int(pd.Timestamp(config.onset_time).value // 1000)
    context = scenarios.ScenarioContext(
        world=world,
        onset_us=onset_us,
        end_us=world.end_us,
        rng=scenarios.scenario_rng(config.scenario, config.seed),
        events_per_day={"card_testing": n_ct / config.days, "account_takeover": n_ato / config.days},
    )
    rows = scenarios.apply_scenario(config.scenario, rows, context)

    holder_rng = np.random.default_rng(holder_ss)
    holders = cardholders.draw(world, CAT_CHANNELS, holder_rng)
    id_ts = rows["ts"].copy()  # ids follow the undisguised times: a planted disparity keeps every row's id
    cardholders.disguise_fraud(world, rows, holders, config.disparity, holder_rng)
    transactions, labels = to_frames(rows, config, id_ts)
    log.info(
        "generated transactions",
        extra={
            "rows": len(transactions),
            "fraud_rate": round(float(transactions["is_fraud"].mean()), 5),
            "labels": len(labels),
            "scenario": config.scenario,
            "seed": config.seed,
        },
    )
    return GeneratedData(transactions, labels, config, cardholders.frame(holders))
