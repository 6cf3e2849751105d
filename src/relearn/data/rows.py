"""Generated rows and the view of the world that scenarios and card holders draw from.

The generator's ``World`` satisfies :class:`WorldView` structurally; scenarios and card holders depend
on this protocol, not on the generator, so the generator imports them and nothing imports it back.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Rows = dict[str, np.ndarray]  # column name -> array; categorical columns hold codes, -1 means null
ROW_COLUMNS = (
    "ts", "user", "merchant", "amount", "currency", "category", "channel", "country", "device", "pattern",
    "cb_delay",
)  # fmt: skip


def concat(*parts: Rows) -> Rows:
    """Stack row blocks column by column."""
    return {k: np.concatenate([p[k] for p in parts]) for k in ROW_COLUMNS}


def take(rows: Rows, index: np.ndarray) -> Rows:
    """The rows at ``index`` (an integer index or a boolean mask)."""
    return {k: v[index] for k, v in rows.items()}


class WorldView(Protocol):
    """What a scenario or the card-holder table reads from the simulated world."""

    config: Any  # relearn.data.generator.GeneratorConfig
    start_us: int
    user_country: np.ndarray
    user_currency: np.ndarray
    user_spend: np.ndarray
    user_cat_p: np.ndarray

    def pick_merchant(self, rng: np.random.Generator, cat: np.ndarray, user: np.ndarray | None) -> np.ndarray:
        """Merchants of categories ``cat`` (near the users' homes when ``user`` is given)."""

    def pick_channel(self, rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
        """A channel per row, by category."""

    def amounts(
        self,
        rng: np.random.Generator,
        cat: np.ndarray,
        merchant: np.ndarray,
        user: np.ndarray,
        currency: np.ndarray,
        scale: float | np.ndarray = 1.0,
    ) -> np.ndarray:
        """Amounts in ``currency``."""

    def times(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """Timestamps (µs) on day indices ``day``."""

    def chargeback_delays(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Chargeback delays of ``n`` fraud rows."""

    def user_device(self, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
        """The users' usual devices."""

    def card_testing(self, rng: np.random.Generator, n_events: int, lo_us: int, hi_us: int) -> Rows:
        """Card-testing bursts in ``[lo_us, hi_us)``."""

    def account_takeover(self, rng: np.random.Generator, n_events: int, lo_us: int, hi_us: int) -> Rows:
        """Account-takeover bursts in ``[lo_us, hi_us)``."""
