"""The simulated world's parameters: spending profiles, countries and currencies, hours, fraud patterns."""

from __future__ import annotations

import numpy as np

from relearn.data.schema import (
    CHANNELS,
    COUNTRIES,
    CURRENCIES,
    FRAUD_PATTERNS,
    MERCHANT_CATEGORIES,
)

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US

CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
CH = {name: i for i, name in enumerate(CHANNELS)}
CUR = {name: i for i, name in enumerate(CURRENCIES)}
PATTERN = {name: i for i, name in enumerate(FRAUD_PATTERNS)}

# category: (share of everyday spending, median amount in EUR, log-sd, channel mix pos/contactless/ecom/atm)
CATEGORY_PROFILE: dict[str, tuple[float, float, float, tuple[float, float, float, float]]] = {
    "grocery": (0.22, 40.0, 0.6, (0.35, 0.60, 0.05, 0.0)),
    "restaurants": (0.13, 30.0, 0.5, (0.30, 0.65, 0.05, 0.0)),
    "fuel": (0.07, 60.0, 0.35, (0.50, 0.50, 0.0, 0.0)),
    "transport": (0.08, 12.0, 0.6, (0.10, 0.50, 0.40, 0.0)),
    "travel": (0.025, 400.0, 0.8, (0.20, 0.05, 0.75, 0.0)),
    "electronics": (0.03, 250.0, 0.8, (0.30, 0.15, 0.55, 0.0)),
    "fashion": (0.07, 70.0, 0.6, (0.35, 0.30, 0.35, 0.0)),
    "digital_goods": (0.08, 15.0, 0.7, (0.0, 0.0, 1.0, 0.0)),
    "gambling": (0.015, 50.0, 0.9, (0.05, 0.0, 0.95, 0.0)),
    "pharmacy": (0.05, 25.0, 0.5, (0.40, 0.55, 0.05, 0.0)),
    "utilities": (0.03, 90.0, 0.5, (0.0, 0.0, 1.0, 0.0)),
    "entertainment": (0.05, 35.0, 0.6, (0.30, 0.30, 0.40, 0.0)),
    "cash_withdrawal": (0.05, 100.0, 0.5, (0.0, 0.0, 0.0, 1.0)),
}
_PROFILE = [CATEGORY_PROFILE[c] for c in MERCHANT_CATEGORIES]
CAT_SHARE = np.array([p[0] for p in _PROFILE])
CAT_MEDIAN = np.array([p[1] for p in _PROFILE])
CAT_SIGMA = np.array([p[2] for p in _PROFILE])
CAT_CHANNELS = np.array([p[3] for p in _PROFILE])

# Units of each currency per EUR, so one amount model serves every currency.
FX = np.array([{"EUR": 1.0, "GBP": 0.85, "USD": 1.1, "PLN": 4.3, "SEK": 11.0}[c] for c in CURRENCIES])
HOME_CURRENCY = {"DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "IT": "EUR", "GB": "GBP", "PL": "PLN"}
HOME_CURRENCY |= {"SE": "SEK"}  # everything else (US, BR, NG, RU, CN) pays in USD
_HOME_WEIGHT = {"DE": 24, "FR": 16, "GB": 14, "NL": 7, "ES": 10, "IT": 10, "PL": 7, "SE": 5, "US": 5}
HOME_COUNTRY_P = np.array([_HOME_WEIGHT.get(c, 0.5) for c in COUNTRIES], dtype=float)
TRAVEL_COUNTRY_P = np.array([_HOME_WEIGHT.get(c, 0.0) for c in COUNTRIES], dtype=float)
# Where fraudsters operate from; account takeovers show up in one of these, never at home.
ATTACKER_COUNTRY_P = np.array(
    [{"US": 15, "GB": 5, "BR": 20, "NG": 20, "RU": 20, "CN": 20}.get(c, 0) for c in COUNTRIES], dtype=float
)

# Relative activity per hour (UTC): quiet nights, lunch bump, evening peak; weekends start later.
WEEKDAY_HOURS = [
    .25, .15, .1, .08, .08, .15, .35, .7, .9, .9, 1, 1.1,  # 00-11 h
    1.3, 1.1, 1, 1, 1.1, 1.3, 1.6, 1.7, 1.5, 1.1, .7, .45,  # 12-23 h
]  # fmt: skip
WEEKEND_HOURS = [
    .45, .3, .2, .12, .1, .1, .15, .3, .55, .8, 1, 1.2,  # 00-11 h
    1.3, 1.3, 1.3, 1.3, 1.3, 1.4, 1.5, 1.6, 1.5, 1.2, .9, .65,  # 12-23 h
]  # fmt: skip
HOUR_P = np.array([WEEKDAY_HOURS, WEEKEND_HOURS])
DAY_OF_WEEK_VOLUME = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.1, 0.8])  # Monday .. Sunday

# Share of fraud rows per base pattern, and pattern parameters.
FRAUD_MIX = {"card_testing": 0.3, "account_takeover": 0.35, "compromised_merchant": 0.35}
CARD_TESTING_MEAN_BURST = 9.0  # 3 + Poisson(6) attempts
ACCOUNT_TAKEOVER_MEAN_BURST = 4.0  # 2 + Poisson(2) purchases
ATO_CATEGORIES = {
    "electronics": 0.4,
    "travel": 0.15,
    "fashion": 0.15,
    "gambling": 0.15,
    "digital_goods": 0.15,
}
COMPROMISED_CATEGORIES = ("restaurants", "fuel", "fashion", "electronics", "entertainment", "grocery")
COMPROMISED_MAX_SHARE = 0.3  # at most this share of a compromised merchant's transactions are fraud
