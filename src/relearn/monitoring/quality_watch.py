"""The monitor's label side: rolling quality per track and per model version, and its incidents.

A mixin of :class:`relearn.monitoring.monitor.Monitor` (it uses the monitor's settings, connection, metrics,
tester, responder and incident path): recall at the alert budget against the baseline (the reference's
labels, else the track's first labelled window), the fraud prevalence against the reference's, the optional
floors, and the per-version gauges the rollout controller's label gates read.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from relearn.monitoring.detector import SCORE, DriftTester
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.payloads import TRACKS
from relearn.monitoring.quality import (
    Baseline,
    Quality,
    baseline_from,
    recall_drop_p_value,
    recent_versions,
    reviewed,
    rolling_quality,
)
from relearn.monitoring.response import Responder
from relearn.monitoring.settings import DriftSettings

log = logging.getLogger(__name__)


class QualityWatch:
    """Quality from the joined labels; mixed into the monitor."""

    settings: DriftSettings
    metrics: Metrics
    tester: DriftTester | None
    responder: Responder
    conn: Any
    baseline: Baseline | None
    label_baselines: dict[str, Baseline]
    drop_streak: dict[str, int]
    quality: dict[str, Any]
    quality_updates: int
    version_quality: dict[tuple[str, str], Quality]

    def _incident(self, data: dict[str, Any]) -> None:  # the monitor's
        raise NotImplementedError

    def reset_baseline(self) -> None:
        """Quality baseline of the loaded reference: its recall at budget when it has ``score`` and labels.

        Without them, each track's first labelled window with enough frauds after this (re)load becomes the
        baseline. Drop streaks restart: a new champion is judged on its own.
        """
        from relearn.monitoring.detector import LABEL

        self.baseline, self.label_baselines = None, {}
        self.drop_streak = dict.fromkeys(TRACKS, 0)
        reference = self.tester.reference if self.tester is not None else None
        if reference is not None and LABEL in reference and SCORE in reference:
            labels = pd.to_numeric(reference[LABEL], errors="coerce").fillna(0).to_numpy(np.float64)
            scores = pd.to_numeric(reference[SCORE], errors="coerce").to_numpy(np.float64)
            known = ~np.isnan(scores)
            baseline = baseline_from(scores[known], labels[known], self.settings.alert_budget, "reference")
            if baseline is not None and baseline.positives >= self.settings.quality_min_positives:
                self.baseline = baseline

    def _recall_drop(self, track: str, q: Any, record: dict[str, Any]) -> bool:
        """Test the window's recall at budget against the baseline; True once the drop has persisted."""
        s = self.settings
        baseline = self.baseline or self.label_baselines.get(track)
        if q.positives < s.quality_min_positives:
            return False
        if baseline is None:  # no labelled reference: this window is the baseline of the track
            self.label_baselines[track] = Baseline(q.caught, q.positives, 1.0, "labels")
            record["baseline"] = "labels (this window)"
            return False
        p = recall_drop_p_value(q.caught, q.positives, baseline, s.min_recall_ratio)
        self.drop_streak[track] = self.drop_streak[track] + 1 if p < s.quality_p_val else 0
        record.update(
            recall_p_value=p,
            baseline=baseline.source,
            baseline_recall=baseline.recall,
            drop_streak=self.drop_streak[track],
        )
        return self.drop_streak[track] >= s.quality_persistence

    def update_quality(self) -> dict[str, Any]:
        """Recompute the rolling quality of every track from the joined labels; alert on a drop.

        A drop (reason ``recall``) is recall at budget significantly below ``min_recall_ratio`` x the
        baseline's (one-sided z-test at ``quality_p_val``, see :func:`recall_drop_p_value`) for
        ``quality_persistence`` consecutive updates. Also reported: the optional hard floors
        ``min_recall`` / ``min_pr_auc`` (off by default), and (when the reference carries ``is_fraud``) a
        fraud prevalence among the labelled predictions significantly above the reference's (one-sided
        binomial test at ``p_val``): a prior (label) shift. One incident per track and update lists the
        reasons; the alerter's cool-down makes an episode one trigger.
        """
        from relearn.monitoring.detector import LABEL

        s = self.settings
        out = {}
        for track in TRACKS:
            q = rolling_quality(self.conn, track, s.quality_window, s.alert_budget, s.label_maturity_s)
            if q is None:
                continue
            record: dict[str, Any] = dict(q.__dict__)
            for gauge, value in ((self.metrics.precision, q.precision), (self.metrics.recall, q.recall)):
                gauge.labels(track).set(value)
            self.metrics.pr_auc.labels(track).set(q.pr_auc)
            self.metrics.prevalence.labels(track).set(q.positives / q.n)
            record["roc_auc"] = self.responder.observe_quality(self.conn, track)
            reasons = []
            if self._recall_drop(track, q, record):
                reasons.append("recall")
            if q.positives and not math.isnan(q.recall) and q.recall < s.min_recall:
                reasons.append("recall_floor")
            if q.positives and not math.isnan(q.pr_auc) and q.pr_auc < s.min_pr_auc:
                reasons.append("pr_auc_floor")
            p = None
            if self.tester is not None and q.positives >= s.quality_min_positives:
                # Three frauds in the first 57 labels is a campaign's day, not a prior shift (a demo run
                # retrained on it before the onset): like recall, prevalence waits for enough frauds.
                p = self.tester.prevalence_p_value(q.positives, q.n)
            if p is not None:
                record["prevalence_p_value"] = p
                self.metrics.p_value.labels(track, LABEL).set(p)
                if p < s.p_val:
                    reasons.append("prevalence")
            record["reasons"] = reasons
            out[track] = record
            if reasons:
                self.metrics.quality_drops.labels(track).inc()
                self._incident({"kind": "quality", "track": track, **json.loads(json.dumps(record))})
        self.quality = out
        self._update_version_quality()
        self.quality_updates += 1
        return out

    def _update_version_quality(self) -> None:
        """Rolling quality per (track, model version): the gauges the rollout controller's label gates read.

        The versions are those among each track's newest ``quality_window`` predictions; the gauges of a
        version that left the window are removed, so the ``model_version`` label stays bounded.
        """
        s, m = self.settings, self.metrics
        current: dict[tuple[str, str], Quality] = {}
        for track in TRACKS:
            for version in recent_versions(self.conn, track, s.quality_window):
                q = rolling_quality(
                    self.conn, track, s.quality_window, s.alert_budget, s.label_maturity_s, version
                )
                if q is not None:
                    current[(track, version)] = q
        gauges = (
            m.version_labelled,
            m.version_precision,
            m.version_recall,
            m.version_reviewed,
            m.version_frauds,
        )
        for key in self.version_quality.keys() - current.keys():
            for gauge in gauges:
                gauge.remove(*key)
        for key, q in current.items():
            values = (q.n, q.precision, q.recall, reviewed(q.n, s.alert_budget), q.positives)
            for gauge, value in zip(gauges, values, strict=True):
                gauge.labels(*key).set(value)
        self.version_quality = current
