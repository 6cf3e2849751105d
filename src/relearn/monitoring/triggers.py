"""Retraining triggers besides drift and quality alerts: a schedule and a volume of new labels.

Both raise incidents through the monitor's :class:`~relearn.monitoring.alerts.Alerter`, so they share the
cool-down (one trigger per episode, whatever raised it), the webhook, the audit record (``kind`` is the
reason) and the ``relearn_drift_retrain_triggers_total{reason}`` counter:

* **schedule** (``schedule_interval_s``): the monitor's own clock raises one when that long has passed
  since the last trigger (or since the detector first started), in local and cluster mode alike (in a
  cluster the incident starts one KFP run, like a drift trigger). With ``schedule_runner=kfp`` the cluster's
  schedule is instead a KFP recurring run of the compiled pipeline the detector creates once
  (:func:`relearn.monitoring.trigger.ensure_recurring_run`, ``max_concurrency=1``, ``no_catchup``), which
  KFP fires on its own: no cool-down, no page, not counted.
* **volume** (``volume_labels``): once that many live predictions have matured labels (served before the
  newest chargeback minus ``label_maturity_s``, a missing chargeback meaning legitimate) since the last
  trigger.

Checked at most every ``CHECK_S`` and only outside the cool-down: a due trigger is raised once, not counted
as suppressed at every check.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relearn.monitoring import store
from relearn.monitoring.served import LIVE_TRACKS

if TYPE_CHECKING:
    from relearn.monitoring.alerts import Alerter
    from relearn.monitoring.settings import DriftSettings

log = logging.getLogger(__name__)
CHECK_S = 5.0  # least seconds between two checks (the volume count is one indexed query)
SINCE_KEY = "triggers_since"  # state: when the detector first started (the schedule's origin)
REASONS = ("drift", "quality", "schedule", "volume")


def labelled_since(conn: sqlite3.Connection, since: float, maturity_s: float) -> int:
    """Live predictions made after ``since`` whose label has matured (newest label time - ``maturity_s``)."""
    newest = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()[0]
    if newest is None:
        return 0
    row = conn.execute(
        f"SELECT COUNT(*) FROM predictions WHERE track IN ({','.join('?' * len(LIVE_TRACKS))}) "
        "AND time > ? AND time <= ?",
        (*LIVE_TRACKS, since, float(newest) - maturity_s),
    ).fetchone()
    return int(row[0])


class Triggers:
    """The schedule and volume triggers of one detector; ``check()`` is called from the monitor's loop."""

    def __init__(
        self,
        settings: DriftSettings,
        conn: sqlite3.Connection,
        alerter: Alerter,
        raise_incident: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.alerter = alerter
        self.raise_incident = raise_incident
        self.clock = clock
        self._next_check = 0.0
        self._recurring_done = False
        self.started = float(store.get_state(conn, SINCE_KEY) or 0) or None

    def since(self) -> float:
        """Time of the last trigger, else of the detector's first start (persisted)."""
        if self.started is None:
            self.started = self.clock()
            store.set_state(self.conn, [(SINCE_KEY, repr(self.started))])
        return max(self.started, self.alerter.last_fired or 0.0)

    def check(self) -> str | None:
        """Raise a due schedule or volume incident; returns its reason (None: nothing raised)."""
        s, now = self.settings, self.clock()
        if s.schedule_interval_s is None and s.volume_labels is None:
            return None
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_S
        kfp_schedule = s.trigger_mode == "cluster" and s.schedule_runner == "kfp"
        if kfp_schedule and s.schedule_interval_s is not None and not self._recurring_done:
            self._recurring()
        since = self.since()
        if self.alerter.cooling():
            return None
        own_schedule = s.schedule_interval_s is not None and not kfp_schedule
        if own_schedule and now - since >= s.schedule_interval_s:
            self.raise_incident(
                {"kind": "schedule", "track": "stable", "interval_s": s.schedule_interval_s, "since": since}
            )
            return "schedule"
        if s.volume_labels is not None:
            n = labelled_since(self.conn, since, s.label_maturity_s)
            if n >= s.volume_labels:
                self.raise_incident(
                    {"kind": "volume", "track": "stable", "labelled": n, "volume_labels": s.volume_labels,
                     "since": since}
                )  # fmt: skip
                return "volume"
        return None

    def _recurring(self) -> None:
        from relearn.monitoring.trigger import ensure_recurring_run

        s = self.settings
        assert s.schedule_interval_s is not None
        try:
            ensure_recurring_run(s.kfp_host, s.kfp_package, int(s.schedule_interval_s))
            self._recurring_done = True
        except Exception:  # the KFP API is down: retried at the next check
            log.exception("KFP recurring run not created")
