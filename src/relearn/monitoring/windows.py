"""The monitor's in-memory state per track: requests waiting for their response, and the open window."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pending:
    """A request waiting for its response."""

    track: str  # from the event's headers
    rows: list[dict[str, Any]]
    ids: list[str | None]
    time: float
    # When the monitor read it (monotonic): the TTL is wall time, as a replay's event times may jump days.
    held: float = field(default_factory=time.monotonic)


@dataclass
class Window:
    """The open window of one track: the pairs whose response came at or after ``start_seq``."""

    start_seq: int = 0
    start_time: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    index: int = 0
    versions: list[str | None] = field(default_factory=list)  # per score: for the label-free estimates
    ids: list[str | None] = field(default_factory=list)  # per score: to join the labels later
