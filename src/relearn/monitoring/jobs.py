"""A periodic job of the drift detector: ``run_once`` every ``interval_s`` in a daemon thread.

The skew check and the log's retention run this way beside the monitor; a failed pass is handled by
``on_error`` (logged, counted where the job has a metric) and the next pass tries again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class PeriodicJob:
    """Subclasses implement :meth:`run_once`; ``errors`` are the exceptions a pass may fail with."""

    errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, name: str, interval_s: float) -> None:
        self.name, self.interval_s = name, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start (the first pass runs at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the running pass."""
        self._stop.set()
        self._thread.join(timeout=30)

    def run_once(self) -> Any:
        """One pass."""
        raise NotImplementedError

    def on_error(self) -> None:
        """A pass failed (called in its ``except``)."""
        log.exception("%s failed", self.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except self.errors:
                self.on_error()
            self._stop.wait(self.interval_s)
