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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.served import DetectorRows, LogFile, ServedRows
from relearn.rollout.analysis import AnalysisSettings, Evidence, Verdict

log = logging.getLogger(__name__)

SOURCE = "backtest"
__all__ = ["SOURCE", "Backtest", "DetectorRows", "LogFile", "ServedRows"]  # the rows re-exported


class Backtest:
    """Backtest evidence from the inference log (read-only), models from the MLflow registry.

    Served inputs are read incrementally (by the log's sequence number) and kept per transaction, and the
    two models are loaded once per version pair, so an iteration costs the new events and one scoring.

    Args:
        rows: The drift detector's inference log: its file (a path) or its endpoints (:class:`DetectorRows`).
        cfg: The promotion policy (``backtest_*`` settings, ``alert_budget``).
        settings: Where MLflow lives (default: from the environment).
        max_rows: Newest labelled rows compared, and twice as many served inputs kept.
    """

    def __init__(
        self,
        rows: ServedRows | Path | str,
        cfg: AnalysisSettings,
        settings: Any = None,
        max_rows: int = 100_000,
    ) -> None:
        from relearn.settings import RelearnSettings

        self.rows = LogFile(rows) if isinstance(rows, Path | str) else rows
        self.cfg, self.max_rows = cfg, max_rows
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
        matured = self.rows.labels(since, cfg.backtest_label_maturity_seconds, self.max_rows)
        self._read_inputs(since)
        labels = pd.Series({k: v for k, v in matured.items() if k in self._inputs}, dtype=np.int64)
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

    def _read_inputs(self, since: float) -> None:
        """Add the model inputs of the live requests logged since the last call (and after ``since``)."""
        more = True
        while more:
            inputs, self._cursor, more = self.rows.inputs(since, self._cursor)
            self._inputs.update(inputs)
        if len(self._inputs) > 2 * self.max_rows:  # keep the newest
            self._inputs = dict(list(self._inputs.items())[-2 * self.max_rows :])
