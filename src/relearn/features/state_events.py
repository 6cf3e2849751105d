"""The streaming state's records: events, the windows the backends return, the bounds of a query.

Shared by :mod:`relearn.features.state` (the facade and the feature finishing) and its two backends
(:mod:`relearn.features.state_sqlite`, :mod:`relearn.features.state_redis`), so neither backend imports
the facade that opens it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from relearn.features.windows import HORIZON_US, MERCHANT_RETENTION_US, USER_RETENTION_US, WINDOWS


@dataclass(frozen=True)
class Event:
    """One transaction as the state records it (``amount`` None: counted, left out of amount statistics)."""

    transaction_id: str
    time_us: int
    user_id: str
    merchant_id: str
    amount: float | None = None
    country: str = ""
    device_id: str = ""

    @property
    def place(self) -> tuple[str, str]:
        """Where the card was used: ``(country, device_id)``."""
        return self.country, self.device_id


@dataclass(frozen=True)
class UserWindow:
    """A user's events in ``[t - retention, t)`` (time order) and the last one in ``[t - horizon, t)``."""

    times: np.ndarray  # int64 µs
    amounts: np.ndarray  # float64, NaN for none
    merchants: list[str]
    last: tuple[int, str, str] | None  # (time µs, country, device)


@dataclass(frozen=True)
class MerchantWindow:
    """A merchant's intermediate values at t: amount sums over 7 d, counts over 24 h and 30 d."""

    n: int  # non-null amounts in the mean's window
    s: float  # sum of (amount - centre)
    ss: float  # sum of (amount - centre)²
    centre: float
    count_24h: int
    count_30d: int
    chargebacks_30d: int


# read: windows only; add: store only (bootstrap); observe: store, then read, atomically per entity.
Mode = Literal["read", "add", "observe"]


class Backend(Protocol):
    """Storage of raw events; every call is atomic per entity."""

    def users(self, events: list[Event], mode: Mode) -> list[UserWindow]:
        """Add each event to its user (once per id) and/or read the user's window at its time."""

    def merchants(self, events: list[Event], mode: Mode) -> list[MerchantWindow]:
        """The same for merchants, returning the intermediate values."""

    def windows(self, events: list[Event], mode: Mode) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """:meth:`users` and :meth:`merchants` in one step: one round trip per shard, one transaction."""

    async def windows_async(
        self, events: list[Event], mode: Mode
    ) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """:meth:`windows` for an event loop: never blocks it on I/O or a lock."""

    def chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """Add ``(merchant_id, transaction_id, received µs)`` once per id; returns how many were new."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class Bounds:
    """Absolute window bounds (µs) of one query time; the one place the windows become numbers."""

    t: int
    user_from: int  # the user's windowed features
    last_from: int  # the previous transaction
    merchant_mean_from: int
    merchant_24h_from: int
    merchant_30d_from: int
    prune_user: int  # events older than these can be dropped (lateness included)
    prune_merchant: int

    @classmethod
    def at(cls, t: int, lateness_us: int) -> Bounds:
        """The bounds of a query at ``t`` µs."""
        return cls(
            t=t,
            user_from=t - USER_RETENTION_US,
            last_from=t - HORIZON_US,
            merchant_mean_from=t - WINDOWS["merchant_amount_mean_7d"],
            merchant_24h_from=t - WINDOWS["merchant_txn_count_24h"],
            merchant_30d_from=t - WINDOWS["merchant_chargeback_rate_30d"],
            prune_user=t - USER_RETENTION_US - lateness_us,
            prune_merchant=t - MERCHANT_RETENTION_US - lateness_us,
        )


def encode_user(event: Event) -> str:
    """A user's event as stored (JSON keeps any id text safe)."""
    return json.dumps([event.transaction_id, event.amount, event.merchant_id, event.country, event.device_id])
