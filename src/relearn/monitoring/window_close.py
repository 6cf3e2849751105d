"""The monitor's window side: a full window is closed, tested, exported, recorded, reported, alerted.

A mixin of :class:`relearn.monitoring.monitor.Monitor` (it uses the monitor's settings, connection, metrics,
tester, responder, estimates and incident path). A window is full at ``window_size`` pairs or, with
``window_seconds``, after that long; its boundary is persisted (``state`` table) with the pairs before it,
so a restart resumes at the next window. Canary and shadow windows also get their score divergence
from the last closed stable window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from relearn.monitoring import store
from relearn.monitoring.detector import SCORE, DriftTester, WindowResult
from relearn.monitoring.estimate import WindowEstimates
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.report import write_report
from relearn.monitoring.response import Responder
from relearn.monitoring.settings import DriftSettings
from relearn.monitoring.windows import Window

log = logging.getLogger("relearn.monitoring.monitor")  # the monitor's own log, as before the split
COMPARED_TRACKS = ("canary", "shadow")  # score divergence against the last stable window


class WindowCloser:
    """Closing full windows; mixed into the monitor."""

    settings: DriftSettings
    metrics: Metrics
    tester: DriftTester | None
    responder: Responder
    estimates: WindowEstimates
    conn: Any
    windows: dict[str, Window]
    results: dict[str, list[dict[str, Any]]]
    stable_scores: np.ndarray | None
    _save: Callable[[list[Any]], None]
    _incident: Callable[[dict[str, Any]], None]

    def _maybe_close(self, track: str, seq: int, t: float, predictions: list[Any]) -> None:
        window = self.windows[track]
        s = self.settings
        if s.window_seconds is not None:
            full = window.start_time is not None and t - window.start_time >= s.window_seconds
        else:
            full = len(window.rows) >= s.window_size
        if not full:
            return
        self._close(track, window)
        self._save(predictions)  # the boundary is persisted: make the pairs before it durable too
        predictions.clear()
        window.rows, window.scores, window.versions, window.ids = [], [], [], []
        window.start_seq, window.start_time = seq + 1, None
        window.index += 1
        store.set_state(
            self.conn,
            [(f"window_start:{track}", str(window.start_seq)), (f"window_index:{track}", str(window.index))],
        )

    def _close(self, track: str, window: Window) -> None:
        assert self.tester is not None
        frame = pd.DataFrame(window.rows)
        scores = np.asarray(window.scores, dtype=np.float64)
        result = self.tester.test(frame, scores)
        m = self.metrics
        m.windows.labels(track).inc()
        m.window_size.labels(track).set(result.size)
        for name, p in result.p_values.items():
            m.p_value.labels(track, name).set(p)
        if result.feature_drift:
            m.detected.labels(track, "features").inc()
        if result.score_drift:
            m.detected.labels(track, SCORE).inc()
        divergence = self._score_divergence(track, scores)
        record = {
            "index": window.index,
            "start_seq": window.start_seq,
            "size": result.size,
            "drift": result.is_drift,
            "drifted": result.drifted,
            "p_values": result.p_values,
        }
        if divergence is not None:
            record["score_divergence"] = divergence
        if violations := self.responder.observe(self.tester, track, window.index, result, frame):
            record["violations"] = violations
        self.estimates.close(
            self.conn, m, self.tester.reference, track, record, scores, window.versions, window.ids
        )
        self.results[track].append(record)
        del self.results[track][:-1000]
        if self.settings.reports:
            self._report(track, window, result, frame, scores)
        if result.is_drift or violations:
            log.info("drift on %s window %d: %s %s", track, window.index, result.drifted, violations)
            self._incident(
                {"kind": "drift", "track": track, "window": window.index, "drifted": result.drifted}
                | ({"violations": violations} if violations else {})
            )

    def _score_divergence(self, track: str, scores: np.ndarray) -> float | None:
        """Export a canary/shadow window's score divergence from the last closed stable window.

        A closed stable window's scores become the comparison; a canary/shadow window's two-sample KS
        statistic against them (in [0, 1]) is exported as ``relearn_drift_score_divergence{track}``.

        Nothing is exported until a stable window with scores has closed (after a restart too), nor for a
        window without scores: the gauge keeps its last value.
        """
        scores = scores[np.isfinite(scores)]
        if not len(scores):
            return None
        if track == "stable":
            self.stable_scores = scores.copy()
            return None
        if track not in COMPARED_TRACKS or self.stable_scores is None:
            return None
        from scipy.stats import ks_2samp

        statistic = float(ks_2samp(scores, self.stable_scores).statistic)
        self.metrics.score_divergence.labels(track).set(statistic)
        return statistic

    def _report(
        self, track: str, window: Window, result: WindowResult, frame: pd.DataFrame, scores: np.ndarray
    ) -> None:
        assert self.tester is not None
        if len(scores):
            frame = frame.assign(**{SCORE: np.resize(scores, len(frame))})
        path = self.settings.data_dir / "reports" / track / f"window-{window.index:06d}.html"
        write_report(path, track, window.index, result, self.tester.reference, frame)
