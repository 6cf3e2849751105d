"""Sticky assignment of cards to arms: a salted SHA-256 of ``user_id`` mapped onto the split.

The arm depends only on (salt, user_id, split), so every replica, every restart and the local stack agree
without shared state. Python's ``hash()`` is salted per process (PYTHONHASHSEED) and would not; a fresh
salt per experiment keeps one experiment's arms independent of another's over the same cards.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

BUCKETS = 10_000  # split resolution: 0.01 %


def new_salt() -> str:
    """A random per-experiment salt (stored with the experiment, never regenerated)."""
    return secrets.token_hex(8)


def bucket(user_id: str | int, salt: str) -> int:
    """The card's bucket in ``[0, BUCKETS)``: the first 8 bytes of SHA-256(salt:user_id) modulo BUCKETS."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS  # 2**64 % 10**4 bias: below 1e-15


@dataclass(frozen=True)
class Split:
    """Arms and their percents (integers summing to 100), in order.

    Raises:
        ValueError: fewer than two arms, duplicate names, percents not positive or not summing to 100.
    """

    arms: tuple[str, ...]
    percents: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.arms) < 2:
            raise ValueError(f"an experiment needs at least two arms, got {list(self.arms)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arm names repeat: {list(self.arms)}")
        if len(self.percents) != len(self.arms):
            raise ValueError(f"{len(self.arms)} arms but {len(self.percents)} percents")
        if any(int(p) != p or p <= 0 for p in self.percents):
            raise ValueError(f"percents must be positive integers, got {list(self.percents)}")
        if sum(self.percents) != 100:
            raise ValueError(f"percents must sum to 100, got {sum(self.percents)} ({list(self.percents)})")

    @classmethod
    def of(cls, split: Mapping[str, int]) -> Split:
        """A split from ``{arm: percent}`` (insertion order is the arm order)."""
        return cls(tuple(split), tuple(split.values()))

    @property
    def edges(self) -> np.ndarray:
        """Upper bucket edge of each arm: arm i holds buckets ``[edges[i-1], edges[i])``."""
        return np.cumsum(np.asarray(self.percents, np.int64) * (BUCKETS // 100))

    def as_dict(self) -> dict[str, int]:
        """``{arm: percent}``, JSON-ready."""
        return dict(zip(self.arms, self.percents, strict=True))


@dataclass(frozen=True)
class Shares:
    """A bandit's arm shares (non-negative floats summing to 1), on the same buckets as a :class:`Split`.

    Arm i holds buckets ``[edges[i-1], edges[i])`` (an arm with share 0 holds none), so when the shares
    change only the cards whose bucket lies between an old and a new edge move: at most the sum of the
    edges' moves, over the bucket count, of all cards.
    """

    arms: tuple[str, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.arms) < 2 or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"shares need two or more distinct arms, got {list(self.arms)}")
        if len(self.shares) != len(self.arms) or min(self.shares) < 0 or abs(sum(self.shares) - 1) > 1e-6:
            raise ValueError(f"shares must be >= 0 and sum to 1, got {list(self.shares)}")

    @classmethod
    def of(cls, shares: Mapping[str, float]) -> Shares:
        """Shares from ``{arm: share}`` (insertion order is the arm order)."""
        return cls(tuple(shares), tuple(float(v) for v in shares.values()))

    @property
    def edges(self) -> np.ndarray:
        """Upper bucket edge of each arm (rounded to a bucket; the last is ``BUCKETS``)."""
        edges = np.rint(np.cumsum(self.shares) * BUCKETS).astype(np.int64)
        edges[-1] = BUCKETS
        return edges


def assign(user_id: str | int, salt: str, split: Split | Shares) -> str:
    """The arm of one card."""
    return split.arms[int(np.searchsorted(split.edges, bucket(user_id, salt), side="right"))]


def assign_many(user_ids: Iterable[str | int], salt: str, split: Split | Shares) -> np.ndarray:
    """The arm of each card (object array of arm names)."""
    buckets = np.fromiter((bucket(u, salt) for u in user_ids), np.int64)
    return np.asarray(split.arms, dtype=object)[np.searchsorted(split.edges, buckets, side="right")]
