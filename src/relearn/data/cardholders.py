"""Card-holder attributes a regulator asks about (age band, region), for fairness measurement only.

They are never model inputs and never request fields: a model that read them would treat card holders
differently *because of* their age or where they live (disparate treatment), and they are measured only
to check that the model's errors do not fall unevenly on a group (see ``relearn.model.fairness``).

How they are simulated:

* **age band** is drawn from each holder's simulated behaviour: holders with more online, digital and
  entertainment spending are more likely young, those with more grocery, pharmacy and utility spending and
  a higher spend level more likely old. So age is realistically correlated with amounts, merchant mix
  and channel, and the world's transactions are bit-identical with and without the attributes (they
  come from a random stream of their own, after the world is built).
* **region** is where the holder lives: a grouping of the home country.
* Neither causes fraud: victims are drawn uniformly from the holders. (Compromised-merchant fraud reaches
  the holders who shop there, so incidence can differ slightly by group through behaviour, as it would.)

A *planted disparity* (``GeneratorConfig.disparity = "age_band=65+"``) disguises every fraud against that
group as the holder's own behaviour (own device, home country, an ordinary amount, as a scammer with
access to the holder's phone would): any model then misses more of that group's fraud, which the fairness
check must report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from relearn.data.rows import Rows, WorldView
from relearn.data.schema import CHANNELS, COUNTRIES, MERCHANT_CATEGORIES

AGE_BANDS: tuple[str, ...] = ("18-29", "30-44", "45-64", "65+")
AGE_BAND_SHARE = (0.2, 0.28, 0.32, 0.2)
REGIONS: tuple[str, ...] = ("central", "western", "southern", "other")
REGION_OF_COUNTRY = {"DE": "central", "NL": "central", "PL": "central", "FR": "western", "GB": "western"}
REGION_OF_COUNTRY |= {"ES": "southern", "IT": "southern"}  # everything else: "other"
ATTRIBUTES: dict[str, tuple[str, ...]] = {"age_band": AGE_BANDS, "region": REGIONS}
DAY_US = 24 * 3_600_000_000
UNKNOWN = "unknown"  # the group of a holder missing from the card-holder table

CARDHOLDER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age_band", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
    ]
)

_YOUNG = ("digital_goods", "gambling", "entertainment", "transport", "electronics")
_OLD = ("grocery", "pharmacy", "utilities", "fuel")


def user_ids(n_users: int) -> np.ndarray:
    """The ids of holders 0..n-1, as the transactions spell them."""
    return np.array([f"u{i:06d}" for i in range(n_users)], dtype=object)


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def draw(world: WorldView, channel_mix: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Attribute codes per holder (indices into :data:`ATTRIBUTES`' domains), drawn from their behaviour.

    ``channel_mix`` is the generator's categories x channels mix, for each holder's expected online share.
    """
    cat_p = world.user_cat_p / world.user_cat_p.sum(axis=1, keepdims=True)
    online = cat_p @ channel_mix[:, CHANNELS.index("ecommerce")]
    young = cat_p[:, [MERCHANT_CATEGORIES.index(c) for c in _YOUNG]].sum(axis=1)
    old = cat_p[:, [MERCHANT_CATEGORIES.index(c) for c in _OLD]].sum(axis=1)
    n = len(online)
    latent = (
        -0.8 * _z(online)
        - 0.5 * _z(young)
        + 0.6 * _z(old)
        + 0.4 * _z(np.log(world.user_spend))
        + rng.normal(0.0, 0.8, n)
    )
    cuts = np.quantile(latent, np.cumsum(AGE_BAND_SHARE)[:-1])
    region_of = np.array([REGIONS.index(REGION_OF_COUNTRY.get(c, "other")) for c in COUNTRIES])
    return {"age_band": np.searchsorted(cuts, latent), "region": region_of[world.user_country]}


def frame(codes: dict[str, np.ndarray]) -> pd.DataFrame:
    """The card-holder table (CARDHOLDER_SCHEMA): one row per holder."""
    n = len(next(iter(codes.values())))
    out = {"user_id": user_ids(n)}
    for name, domain in ATTRIBUTES.items():
        out[name] = np.array(domain, dtype=object)[codes[name]]
    return pd.DataFrame(out, columns=CARDHOLDER_SCHEMA.names)


def parse_disparity(spec: str) -> tuple[str, str] | None:
    """``"attribute=group"`` as a pair, "" as None; raises ValueError naming what is wrong."""
    if not spec:
        return None
    name, sep, group = spec.partition("=")
    if not sep or name not in ATTRIBUTES:
        raise ValueError(f"disparity must be 'attribute=group' with attribute one of {list(ATTRIBUTES)}")
    if group not in ATTRIBUTES[name]:
        raise ValueError(f"disparity: {name} has no group {group!r}; choose one of {ATTRIBUTES[name]}")
    return name, group


def disguise_fraud(
    world: WorldView, rows: Rows, codes: dict[str, np.ndarray], spec: str, rng: np.random.Generator
) -> None:
    """Plant a disparity, in place: fraud against the group ``spec`` names looks like the holder's own use.

    Holders, merchants and labels stay, and ids follow the undisguised times (the generator's ``id_ts``):
    the planted world and the default one with the same seed hold the same transactions, with the same
    ids, only these frauds look different (and happen later, chargebacks with them).
    """
    target = parse_disparity(spec)
    if target is None:
        return
    name, group = target
    user = rows["user"]
    hit = np.flatnonzero((rows["pattern"] > 0) & (codes[name][user] == ATTRIBUTES[name].index(group)))
    u = user[hit]
    # Spread over the following week at the holder's usual hours: no burst for velocity features to see.
    day = (rows["ts"][hit] - world.start_us) // DAY_US + rng.integers(0, 7, len(hit))
    rows["ts"][hit] = world.times(rng, np.minimum(day, world.config.days - 1))
    rows["country"][hit] = world.user_country[u]
    rows["device"][hit] = world.user_device(rng, u)
    rows["channel"][hit] = world.pick_channel(rng, rows["category"][hit])
    rows["amount"][hit] = world.amounts(
        rng, rows["category"][hit], rows["merchant"][hit], u, rows["currency"][hit]
    )
