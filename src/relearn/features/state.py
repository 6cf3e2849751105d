"""Streaming entity state: the online features follow every transaction scored and every chargeback received.

The state keeps each entity's raw events of its longest window (plus the lateness bound), deduplicated by
``transaction_id``, in one of two backends with the same semantics:

* ``sqlite`` (the embedded default): one WAL database file shared by the processes of one machine;
* ``redis``: sorted sets updated by Lua scripts (atomic per entity), sharded by entity key over
  ``RELEARN_STATE_REDIS_URLS``.

:meth:`OnlineState.observe` adds a request's transactions and reads each one's features in a single atomic
step per entity: the window ``[t - w, t)`` never contains the transaction itself, so a retry, a second
replica or the shadow mirror sees the same values and counts the transaction once. Two transactions of a
card see each other only in event-time order. The intermediate values (counts, centred sums, distinct
merchants, the last event) are finished by :mod:`relearn.features.windows`, the functions the training set
uses, so online and offline values are the same numbers (``tests/features/test_state.py`` proves it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.errors import InvalidRequest
from relearn.features.spec import ENTITY_DEFAULTS, MERCHANT_FEATURES, USER_FEATURES
from relearn.features.state_events import Backend, Event, MerchantWindow, UserWindow
from relearn.features.windows import (
    US,
    WINDOWS,
    centred_sums,
    chargeback_rate,
    mean_std,
)


class StateSettings(BaseSettings):
    """Where the streaming state lives and which events it admits (``RELEARN_STATE_*``)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_STATE_", extra="ignore")

    backend: Literal["sqlite", "redis"] = Field("sqlite", description="sqlite (embedded) or redis.")
    path: Path | None = Field(None, description="SQLite file (sqlite); default <home>/online_state.db")
    redis_urls: str = Field(
        "redis://127.0.0.1:6379/1",
        description="Comma-separated Redis URLs, one per shard; entities are spread by a hash of their key.",
    )
    redis_password: str | None = Field(None, description="Redis password (else the URL's).")
    key_prefix: str = Field("relearn:state:", description="Prefix of every Redis key.")
    lateness_seconds: float = Field(
        3600.0, ge=0, description="Events older than the clock by more than this are rejected."
    )
    max_future_seconds: float = Field(
        300.0, ge=0, description="Events ahead of the wall clock by more than this are rejected."
    )
    clock: Literal["wall", "stream"] = Field(
        "stream",
        description="What lateness is measured against: the wall clock (production) or the latest event "
        "time this process admitted (replays of simulated or historical streams).",
    )


class Rejected(InvalidRequest, ValueError):
    """An event the state refuses (too late, from the future, malformed); the message names the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, code=reason)
        self.reason = reason


_USER_COUNTS = ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d")


def entity_features(
    events: list[Event], users: list[UserWindow], merchants: list[MerchantWindow]
) -> list[dict[str, Any]]:
    """Each event's features from its user's window and its merchant's intermediate values.

    The windows' intermediate values (counts, centred sums, distinct merchants, the last event) are taken
    here; the shared functions finish them, once for the whole batch (they are vectorised).
    """
    out: list[dict[str, Any]] = []
    sums: list[tuple[int, float, float, float]] = []
    for e, window in zip(events, users, strict=True):
        t, times = e.time_us, window.times
        row: dict[str, Any] = {
            name: len(times) - int(np.searchsorted(times, t - WINDOWS[name], side="left"))
            for name in _USER_COUNTS
        }
        inside = times >= t - WINDOWS["user_amount_mean_7d"]
        sums.append(centred_sums(window.amounts[inside]))
        first = int(np.searchsorted(times, t - WINDOWS["user_distinct_merchants_7d"], side="left"))
        row["user_distinct_merchants_7d"] = len(set(window.merchants[first:]))
        if window.last is None:
            row.update(user_last_txn_unix=np.nan, user_last_country=None, user_last_device=None)
        else:
            when, country, device = window.last
            row.update(user_last_txn_unix=when / US, user_last_country=country, user_last_device=device)
        out.append(row)
    sums += [(m.n, m.s, m.ss, m.centre) for m in merchants]
    n, s, ss, centre = (np.array(v, dtype=np.float64) for v in zip(*sums, strict=True)) if sums else [[]] * 4
    mean, std = mean_std(n, s, ss, centre)
    rate = chargeback_rate([m.chargebacks_30d for m in merchants], [m.count_30d for m in merchants])
    k = len(events)
    for i, (row, m) in enumerate(zip(out, merchants, strict=True)):
        row["user_amount_mean_7d"], row["user_amount_std_7d"] = float(mean[i]), float(std[i])
        row["merchant_txn_count_24h"] = m.count_24h
        row["merchant_amount_mean_7d"] = float(mean[k + i])
        row["merchant_chargeback_rate_30d"] = float(rate[i])
    return out


class OnlineState:
    """The streaming state of users and merchants, on a backend; see the module docstring."""

    def __init__(self, backend: Backend, settings: StateSettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or StateSettings()
        self.lateness_us = int(self.settings.lateness_seconds * US)
        self.watermark: int | None = None  # latest admitted event time (the stream clock)

    def admit(self, times_us: list[int], field: str = "event_timestamp") -> None:
        """Refuse the whole batch if one time is beyond the lateness bound or ahead of the wall clock."""
        now_us = int(time.time() * US)
        limit = now_us + int(self.settings.max_future_seconds * US)
        clock = now_us if self.settings.clock == "wall" else self.watermark
        for t in times_us:
            if t > limit:
                ahead = (t - now_us) / US
                raise Rejected("future", f"field '{field}' is {ahead:.0f} s ahead of the clock")
            if clock is not None and t < clock - self.lateness_us:
                late = (clock - t) / US
                raise Rejected(
                    "late",
                    f"field '{field}' is {late:.0f} s behind the stream, beyond the lateness bound of "
                    f"{self.settings.lateness_seconds:.0f} s",
                )

    def _advance(self, times_us: list[int]) -> None:
        if times_us:
            latest = max(times_us)
            self.watermark = latest if self.watermark is None else max(self.watermark, latest)

    def observe(self, events: list[Event]) -> list[dict[str, Any]]:
        """Add the transactions (once each) and return each one's entity features just before it."""
        times = [e.time_us for e in events]
        self.admit(times)
        users, merchants = self.backend.windows(events, "observe")
        self._advance(times)
        return entity_features(events, users, merchants)

    async def observe_async(self, events: list[Event]) -> list[dict[str, Any]]:
        """:meth:`observe` from an event loop (the transformer): the same, without blocking the loop."""
        times = [e.time_us for e in events]
        self.admit(times)
        users, merchants = await self.backend.windows_async(events, "observe")
        self._advance(times)
        return entity_features(events, users, merchants)

    def read(self, events: list[Event]) -> list[dict[str, Any]]:
        """The features the events would get, without adding them (as-of reads for skew checks)."""
        return entity_features(events, *self.backend.windows(events, "read"))

    def add(self, events: list[Event]) -> None:
        """Store events without reading (bootstrap and backfill: no lateness check, idempotent)."""
        self.backend.windows(events, "add")

    def ingest(self, events: list[Event]) -> None:
        """Store live events that are not scored (the feed): checked against the lateness bound, no read."""
        times = [e.time_us for e in events]
        self.admit(times)
        self.add(events)
        self._advance(times)

    def add_chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """Add chargebacks ``(merchant_id, transaction_id, received µs)``; returns how many were new."""
        self.admit([t for _, _, t in items], field="received_timestamp")
        added = self.backend.chargebacks(items)
        self._advance([t for _, _, t in items])
        return added

    def close(self) -> None:
        """Release the backend's connections."""
        self.backend.close()


FEATURES = (*USER_FEATURES, *MERCHANT_FEATURES)
COLD = {name: ENTITY_DEFAULTS[name] for name in FEATURES}


def open_state(settings: StateSettings | None = None) -> OnlineState:
    """The state on the configured backend."""
    settings = settings or StateSettings()
    lateness_us = int(settings.lateness_seconds * US)
    if settings.backend == "redis":
        from relearn.features.state_redis import RedisBackend

        urls = [u.strip() for u in settings.redis_urls.split(",") if u.strip()]
        backend: Backend = RedisBackend(urls, settings.key_prefix, settings.redis_password, lateness_us)
    else:
        from relearn.features.state_sqlite import SqliteBackend
        from relearn.settings import RelearnSettings

        backend = SqliteBackend(settings.path or RelearnSettings().home / "online_state.db", lateness_us)
    return OnlineState(backend, settings)
