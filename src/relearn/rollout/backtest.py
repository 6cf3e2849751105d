"""Backtest evidence for a canary: its model and the stable one scored on the same recent labelled traffic.

The drift detector's inference log keeps what serving saw: the predictor's requests (the model inputs it
scored, with each row's transaction id), the predictions and the chargebacks. Traffic served after the
canary version's training run started (its registration time without a run) cannot be in its training
window, read before; once its labels have matured (older
than the newest chargeback minus ``backtest_label_maturity_seconds``; without a chargeback a prediction is
a legitimate transaction), both versions, loaded from the registry, score the same rows, and the training
gate's paired bootstrap (:func:`relearn.model.stats.paired_bootstrap` read by
:func:`relearn.model.gate.paired_rule`) compares them. So the evidence grows with the labels of all live
traffic, not with the canary's share of it: it carries a canary whose own predictions are too few, or too
fresh, to be labelled.

Verdicts: *passed* when the canary's gain on ``backtest_metric`` exceeds ``backtest_min_effect`` and no
guarded metric is worse than ``backtest_margin`` (each at ``backtest_confidence``); *failed* when the
primary metric's upper bound is below ``backtest_min_effect`` (confidently worse than tolerated); else, or
below ``backtest_min_rows`` labelled rows / ``backtest_min_positives`` frauds, *unknown*.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relearn.events import REQUEST_TYPE
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.payloads import ID_FIELD, Rejected, request_features
from relearn.rollout.analysis import AnalysisSettings, Evidence, Verdict

log = logging.getLogger(__name__)

SOURCE = "backtest"
LIVE_TRACKS = ("stable", "canary")  # the shadow's mirrored requests are the same transactions again


def labelled(conn: sqlite3.Connection, since: float, maturity_s: float, limit: int) -> pd.Series:
    """Labels (0/1 by transaction id) of the newest ``limit`` matured live predictions after ``since``."""
    newest = conn.execute("SELECT MAX(label_time) FROM labels").fetchone()[0]
    if newest is None:
        return pd.Series(dtype=np.int64)
    rows = conn.execute(
        "SELECT p.transaction_id, MAX(COALESCE(l.is_fraud, 0)) FROM predictions p "
        "LEFT JOIN labels l ON l.transaction_id = p.transaction_id "
        f"WHERE p.track IN ({','.join('?' * len(LIVE_TRACKS))}) AND p.time > ? AND p.time <= ? "
        "GROUP BY p.transaction_id ORDER BY MAX(p.time) DESC LIMIT ?",
        (*LIVE_TRACKS, since, newest - maturity_s, limit),
    ).fetchall()
    return pd.Series({tid: int(fraud) for tid, fraud in rows}, dtype=np.int64)


class Backtest:
    """Backtest evidence from the inference log at ``path`` (read-only), models from the MLflow registry.

    Served inputs are read incrementally (by the log's sequence number) and kept per transaction, and the
    two models are loaded once per version pair, so an iteration costs the new events and one scoring.

    Args:
        path: The drift detector's inference log (SQLite).
        cfg: The promotion policy (``backtest_*`` settings, ``alert_budget``).
        settings: Where MLflow lives (default: from the environment).
        max_rows: Newest labelled rows compared, and twice as many served inputs kept.
    """

    def __init__(
        self, path: Path | str, cfg: AnalysisSettings, settings: Any = None, max_rows: int = 100_000
    ) -> None:
        from relearn.settings import RelearnSettings

        self.path, self.cfg, self.max_rows = Path(path), cfg, max_rows
        self.settings = settings or RelearnSettings()
        self._since: float | None = None
        self._cursor = 0
        self._inputs: dict[str, dict[str, Any]] = {}
        self._models: dict[str, Any] = {}

    def __call__(self, stable: str, canary: str) -> Evidence:
        """The evidence for ``canary`` against ``stable`` now (unknown, with the error, if it fails)."""
        try:
            return self._evidence(stable, canary)
        except Exception as exc:  # a log or registry problem must not stop the analysis: no evidence
            log.warning("backtest of version %s failed: %s", canary, exc)
            return Evidence(SOURCE, Verdict.UNKNOWN, f"failed: {exc}")

    def _evidence(self, stable: str, canary: str) -> Evidence:
        from relearn.model.registry import version_trained

        cfg = self.cfg
        since = version_trained(self.settings, canary)
        if since != self._since:  # another canary: start over
            self._since, self._cursor, self._inputs = since, 0, {}
        conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            labels = labelled(conn, since, cfg.backtest_label_maturity_seconds, self.max_rows)
            self._read_inputs(conn, since)
        finally:
            conn.close()
        labels = labels[labels.index.isin(list(self._inputs))]
        n, positives = len(labels), int(labels.sum())
        what = f"{n} labelled predictions ({positives} fraud) served since v{canary}'s training began"
        if n < cfg.backtest_min_rows or positives < cfg.backtest_min_positives:
            need = f"{cfg.backtest_min_rows} ({cfg.backtest_min_positives} fraud) needed"
            return Evidence(SOURCE, Verdict.UNKNOWN, f"{what}; {need}", n=n, positives=positives)
        frame = pd.DataFrame([self._inputs[k] for k in labels.index], columns=list(MODEL_INPUTS))
        return self._compare(frame, labels.to_numpy(), stable, canary, what)

    def _compare(
        self, frame: pd.DataFrame, labels: np.ndarray, stable: str, canary: str, what: str
    ) -> Evidence:
        from relearn.model.gate import GateParams, describe, paired_rule
        from relearn.model.net import score
        from relearn.model.stats import paired_bootstrap

        cfg = self.cfg
        scores = {v: score(*model, frame) for v, model in self._pair(stable, canary).items()}
        params = GateParams(
            primary_metric=cfg.backtest_metric,
            min_improvement=cfg.backtest_min_effect,
            confidence=cfg.backtest_confidence,
            non_inferiority_margin=cfg.backtest_margin,
        )
        amounts = np.expm1(frame["log_amount"].to_numpy(np.float64))
        paired = paired_bootstrap(
            scores[canary], scores[stable], labels, amounts, budget=cfg.alert_budget, n_boot=params.n_boot
        )
        failed, rows = paired_rule(paired, params)
        primary = rows[cfg.backtest_metric]
        if not failed:
            verdict = Verdict.PASSED
        elif primary["upper"] is not None and primary["upper"] < cfg.backtest_min_effect:
            verdict = Verdict.FAILED
        else:
            verdict = Verdict.UNKNOWN
        detail = f"{what}: v{canary} vs v{stable} {describe(rows, params.confidence)}"
        if failed:
            detail += f"; {'; '.join(failed)}"
        return Evidence(
            SOURCE,
            verdict,
            detail,
            n=len(labels),
            positives=int(labels.sum()),
            metric=cfg.backtest_metric,
            effect=primary["difference"],
            lower=primary["lower"],
            upper=primary["upper"],
            confidence=params.confidence,
        )

    def _pair(self, stable: str, canary: str) -> dict[str, Any]:
        """Both versions' (network, preprocessor), loaded once while they are the pair compared."""
        from relearn.model.registry import load_torch

        self._models = {v: self._models.get(v) or load_torch(self.settings, v) for v in (stable, canary)}
        return self._models

    def _read_inputs(self, conn: sqlite3.Connection, since: float) -> None:
        """Add the model inputs of the live requests logged since the last call (and after ``since``)."""
        while True:
            rows = conn.execute(
                "SELECT seq, ce_id, body FROM events WHERE seq > ? AND type = ? AND received >= ? "
                f"AND track IN ({','.join('?' * len(LIVE_TRACKS))}) ORDER BY seq LIMIT 5000",
                (self._cursor, REQUEST_TYPE, since, *LIVE_TRACKS),
            ).fetchall()
            for seq, ce_id, body in rows:
                self._cursor = seq
                try:
                    parsed = request_features(bytes(body))
                except Rejected:
                    continue
                if not all(name in parsed[0] for name in MODEL_INPUTS):
                    continue  # a transformer's raw request: the predictor logs the inputs it scored
                for i, row in enumerate(parsed):  # keyed as the detector keys its predictions
                    key = row.pop(ID_FIELD, None) or (ce_id if len(parsed) == 1 else f"{ce_id}/{i}")
                    self._inputs[key] = row
            if len(rows) < 5000:
                break
        if len(self._inputs) > 2 * self.max_rows:  # keep the newest
            self._inputs = dict(list(self._inputs.items())[-2 * self.max_rows :])
