"""The monitor thread: reads the inference log, pairs requests with responses, closes windows, alerts.

A request waits in ``pending`` until its response (same ``ce-id``) is read; the pair then goes to the
window of its track, decided at that point:

* ``shadow``: the event names the shadow InferenceService (``shadow_service``);
* else, when the stable version is known (``stable_version``, else the champion the reference was loaded
  from) and the response names its ``model_version``: ``stable`` for that version, ``canary`` for any
  other. The version wins over ``ce-endpoint``: a canary revision started by patching the model URI
  keeps the stable's logger settings (``default``), and a revision the chart rendered as the canary
  keeps saying ``canary`` after its promotion;
* else ``ce-endpoint``: ``default`` is stable, ``canary`` canary (a reference file without
  ``stable_version``, or a response without a version).

After a promotion the new champion's responses name a version the loaded reference does not know: such
a response makes the monitor check the alias at once (at most every ``CHAMPION_RECHECK_S``) rather than
at the next ``reference_poll_s``, so they are counted as canary for seconds at most.

The stored ``predictions`` (the label joins) take the same track; the events table keeps the headers'.
A request whose response never comes (KServe logs responses on 200 only) counts in no window.

Per track it keeps the open window in memory and its first sequence number (of a response) in the
``state`` table; after a restart it re-reads the log from the earliest of them, and the requests of a
bounded stretch before it, so windows resume where they were and nothing accepted is skipped.

Closing a full window (test, metrics, report, incident) is :mod:`relearn.monitoring.window_close`'s, the
label side :mod:`relearn.monitoring.quality_watch`'s: both are mixed into :class:`Monitor`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime
from typing import Any

import numpy as np

from relearn.events import REQUEST_TYPE
from relearn.monitoring import store
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.detector import DriftTester
from relearn.monitoring.estimate import WindowEstimates
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.payloads import ID_FIELD, TRACKS, Rejected, parse_response, request_features
from relearn.monitoring.quality import (
    Baseline,
    Quality,
)
from relearn.monitoring.quality_watch import QualityWatch
from relearn.monitoring.response import Responder
from relearn.monitoring.settings import DriftSettings
from relearn.monitoring.shared_log import Relay
from relearn.monitoring.triggers import Triggers
from relearn.monitoring.window_close import WindowCloser
from relearn.monitoring.windows import Pending, Window

log = logging.getLogger(__name__)
# Requests waiting for their response, oldest dropped beyond this: KServe logs no response for a failed
# request, and each pending row holds its parsed features (~1.6 kB).
MAX_PENDING = 50_000
# After a restart, the requests among this many events before the resume point are read again: their
# responses may come after it (the logger's 5 workers keep a pair within a few hundred events).
PENDING_LOOKBACK = 5000
# Least seconds between two alias checks forced by a stable-headed response naming an unknown version
# (a promotion the poll every reference_poll_s has not seen yet).
CHAMPION_RECHECK_S = 5.0
FILE_REFERENCE = "file"  # the version of a reference read from a file: tracks come from the headers


def _epoch(text: str, default: float) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError):
        return default


class Monitor(QualityWatch, WindowCloser):
    """Consumes the log in a background thread; ``results`` keeps the verdict of every closed window."""

    def __init__(self, settings: DriftSettings, metrics: Metrics, alerter: Alerter) -> None:
        self.settings = settings
        self.metrics = metrics
        self.alerter = alerter
        self.conn = store.connect(settings.data_dir / "inference-log.sqlite3", settings.sqlite_synchronous)
        self.tester: DriftTester | None = None
        self.results: dict[str, list[dict[str, Any]]] = {t: [] for t in TRACKS}
        self.windows = {t: Window() for t in TRACKS}
        self.pending: dict[str, Pending] = {}
        self.early: dict[str, tuple[float, list[float], str | None]] = {}  # responses before their request
        self.cursor = 0
        self.quality_due = threading.Event()
        self.error: str | None = None
        self.quality: dict[str, Any] = {}
        self.quality_updates = 0
        self.baseline: Baseline | None = None  # from the reference sample's labels, if it has them
        self.label_baselines: dict[str, Baseline] = {}  # else per track: first labelled window after a load
        self.drop_streak = dict.fromkeys(TRACKS, 0)
        self.stable_scores: np.ndarray | None = None  # scores of the last closed stable window (in memory)
        self.version_quality: dict[tuple[str, str], Quality] = {}  # (track, model version) → quality
        self.estimates = WindowEstimates(settings.alert_budget, settings.label_maturity_s)
        self.responder = Responder(settings.quality_window, settings.label_maturity_s, conn=self.conn)
        self.triggers = Triggers(settings, self.conn, alerter, self._incident)  # schedule, volume
        self.relay = (
            Relay(settings.shared_log_url, self.conn, metrics=metrics) if settings.shared_log_url else None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
        self._last_poll = 0.0
        self.reference_file = settings.reference_file()  # None: the champion's, from MLflow

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (loads the reference first: alibi-detect's import takes seconds)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.relay is not None:
            self.relay.close()

    def _restore(self) -> None:
        for track, window in self.windows.items():
            window.start_seq = int(store.get_state(self.conn, f"window_start:{track}", "0") or 0)
            window.index = int(store.get_state(self.conn, f"window_index:{track}", "0") or 0)
        fired = store.get_state(self.conn, "last_trigger")
        if fired is not None:
            self.alerter.last_fired = float(fired)
        self.cursor = max(0, min(w.start_seq for w in self.windows.values()) - 1)
        self._refill_pending()

    def _refill_pending(self) -> None:
        """Hold again the requests just before the cursor whose responses were not read before it."""
        start = max(0, self.cursor - PENDING_LOOKBACK)
        for seq, ce_id, kind, track, when, body in store.read_events(self.conn, start, PENDING_LOOKBACK):
            if seq > self.cursor:
                break
            if kind != REQUEST_TYPE:
                self.pending.pop(ce_id, None)
                continue
            with contextlib.suppress(Rejected):  # counted when it was first read
                self._hold(ce_id, track, request_features(body), _epoch(when, time.time()))

    def _load_reference(self) -> None:
        s = self.settings
        if self.reference_file is not None:
            from relearn.monitoring.detector import load_reference_file

            version, reference = FILE_REFERENCE, load_reference_file(self.reference_file)
        else:
            from relearn.monitoring.detector import champion_reference

            version, reference = champion_reference(s.mlflow_tracking_uri, s.model_name, s.model_alias)
        self.tester = DriftTester(
            reference,
            p_val=s.p_val,
            correction=s.correction,
            exclude=s.exclude_features,
            version=version,
            stratify_by=s.stratify_by,
            max_ratio=s.reference_ratio,
        )
        self.reset_baseline()
        self.metrics.reference_version.set(float(version) if version.isdigit() else 0)
        self.metrics.ready.set(1)
        log.info(
            "reference %s loaded: %d rows, %d features", version, len(reference), len(self.tester.features)
        )

    def _poll_champion(self, force: bool = False) -> None:
        """Reload the reference when the alias moved; checked every ``reference_poll_s``.

        Args:
            force: Check sooner, at most every ``CHAMPION_RECHECK_S`` (a response named a new version).
        """
        s = self.settings
        wait = min(CHAMPION_RECHECK_S, s.reference_poll_s) if force else s.reference_poll_s
        if self.reference_file is not None or time.monotonic() - self._last_poll < wait:
            return
        self._last_poll = time.monotonic()
        from relearn.monitoring.detector import champion_version

        current = champion_version(s.mlflow_tracking_uri, s.model_name, s.model_alias)
        if current and self.tester is not None and current != self.tester.version:
            log.info("champion changed %s -> %s: reloading the reference", self.tester.version, current)
            self._load_reference()

    def _run(self) -> None:
        try:
            self._restore()
            self._load_reference()
            self._last_poll = time.monotonic()
        except Exception as error:
            self.error = f"reference not loaded: {error}"
            log.exception("reference not loaded")
        while not self._stop.is_set():
            try:
                # First: the replicas' backlog is taken in even before a champion (a reference) exists.
                busy = self._relay() > 0
                if self.tester is None:
                    self._load_reference()
                    self.error = None
                self._poll_champion()
                busy = self.step() or busy
                self.triggers.check()
                if self.quality_due.is_set():
                    self.quality_due.clear()
                    self.update_quality()
                if not busy:
                    self._stop.wait(self.settings.poll_s)
            except Exception as error:
                self.error = str(error)
                log.exception("monitor step failed")
                self._stop.wait(max(1.0, self.settings.poll_s))

    def _relay(self) -> int:
        """Take the ingest replicas' events into the local log (``shared_log_url``); PG down: later."""
        if self.relay is None:
            return 0
        try:
            return self.relay.step()
        except Exception as error:
            log.warning("relay from the shared log failed: %s", error)
            return 0

    # -- processing ---------------------------------------------------------------------------------
    def step(self, limit: int = 5000) -> bool:
        """Process the next events of the log; True if there were any."""
        events = store.read_events(self.conn, self.cursor, limit)
        predictions: list[tuple[str, str, float, float, str | None]] = []
        for seq, ce_id, kind, track, when, body in events:
            self.cursor = seq
            t = _epoch(when, time.time())
            try:
                if kind == REQUEST_TYPE:
                    self._hold(ce_id, track, request_features(body), t)
                    early = self.early.pop(ce_id, None)
                    if early is None:
                        continue
                    scores, version = early[1:]
                else:
                    scores, version = parse_response(body)
                request = self.pending.pop(ce_id, None)
                if request is None:  # its request comes later (another replica, another sender worker)
                    self._hold_early(ce_id, scores, version)
                    continue
                self._pair(request, scores, version, seq, t, predictions)
            except Rejected as error:  # validated at ingest, unless validate_bodies is off
                self.metrics.rejected.labels(error.reason).inc()
                log.warning("skipping unreadable event %s: %s", seq, error)
        self._save(predictions)
        for track, window in self.windows.items():
            self.metrics.window_fill.labels(track).set(len(window.rows))
        return bool(events)

    def _pair(
        self,
        request: Pending,
        scores: list[float],
        version: str | None,
        seq: int,
        t: float,
        predictions: list,
    ) -> None:
        """A request and its response: the predictions to save, the window's rows."""
        if len(scores) != len(request.rows):
            raise Rejected("bad_body", f"{len(scores)} scores for {len(request.rows)} rows")
        track = self._track_of(request.track, version)
        predictions.extend(
            (tid, track, request.time, s, version) for tid, s in zip(request.ids, scores, strict=True) if tid
        )
        window = self.windows[track]
        if seq >= window.start_seq:  # else the pair was in a window closed before a restart
            if window.start_time is None:
                window.start_time = t
            window.rows.extend(request.rows)
            window.scores.extend(scores)
            window.versions.extend([version] * len(scores))
            window.ids.extend(request.ids)
            self._maybe_close(track, seq, t, predictions)

    def _hold(self, ce_id: str, track: str, rows: list[dict[str, Any]], t: float) -> None:
        """Keep a request's rows until its response comes.

        At most ``pending_ttl_s`` since it was read and MAX_PENDING requests: the oldest are dropped, counted.
        """
        self.pending[ce_id] = Pending(track, rows, self._keys(ce_id, rows), t)
        self._bound(self.pending, lambda p: p.held, "")

    def _hold_early(self, ce_id: str, scores: list[float], version: str | None) -> None:
        """Keep a response read before its request, under the same bounds as requests (``response_*``)."""
        self.early[ce_id] = (time.monotonic(), scores, version)
        self._bound(self.early, lambda e: e[0], "response_")

    def _bound(self, held: dict[str, Any], since: Any, reason: str) -> None:
        """Drop the oldest held items past ``pending_ttl_s`` or MAX_PENDING, counted (``reason`` prefix)."""
        expired = time.monotonic() - self.settings.pending_ttl_s
        while held and since(next(iter(held.values()))) < expired:
            held.pop(next(iter(held)))
            self.metrics.pending_dropped.labels(reason + "ttl").inc()
        if len(held) > MAX_PENDING:
            held.pop(next(iter(held)))
            self.metrics.pending_dropped.labels(reason + "capacity").inc()

    def stable_version(self) -> str | None:
        """The model version of the stable track: the setting, else the champion's (None: unknown)."""
        if self.settings.stable_version is not None:
            return self.settings.stable_version
        if self.tester is not None and self.tester.version != FILE_REFERENCE:
            return self.tester.version
        return None

    def _track_of(self, header_track: str, version: str | None) -> str:
        """The track of a pair: by its response's version when the stable one is known, else the header's.

        The version wins over ``ce-endpoint`` both ways: a canary revision logs ``default`` when it was
        started by a patch of the model URI, and a revision the chart rendered as the canary keeps saying
        ``canary`` after its promotion.
        """
        stable = self.stable_version()
        if header_track == "shadow" or version is None or stable is None:
            return header_track
        if version != stable and self.settings.stable_version is None:  # a promotion not yet polled?
            try:
                self._poll_champion(force=True)
            except Exception:  # the registry is down: the loop's poll retries; keep the pair
                log.exception("reference reload failed")
            stable = self.stable_version()
        return "stable" if version == stable else "canary"

    def _keys(self, ce_id: str, rows: list[dict[str, Any]]) -> list[str | None]:
        """The rows' transaction ids, popped from the rows (request-id keys if ``key_by_request_id``)."""
        ids = [r.pop(ID_FIELD, None) for r in rows]
        if not self.settings.key_by_request_id:
            return ids
        if len(ids) == 1:
            return [ids[0] or ce_id]
        return [tid or f"{ce_id}/{i}" for i, tid in enumerate(ids)]

    def _save(self, predictions: list[tuple[str, str, float, float, str | None]]) -> None:
        if predictions:
            with self.conn:
                self.conn.executemany(
                    "INSERT OR IGNORE INTO predictions (transaction_id, track, time, score, version) "
                    "VALUES (?, ?, ?, ?, ?)",
                    predictions,
                )

    def _incident(self, data: dict[str, Any]) -> None:
        data = self.responder.decide(data)  # response (retrain, recalibrate, page) and why
        fired = self.alerter.incident(data)
        self.metrics.triggers.labels("fired" if fired else "suppressed").inc()
        self.metrics.retrain_triggers.labels(data["kind"], "fired" if fired else "suppressed").inc()
        self.metrics.responses.labels(data["response"]).inc(fired)
        if fired and self.alerter.last_fired is not None:
            store.set_state(self.conn, [("last_trigger", repr(self.alerter.last_fired))])
