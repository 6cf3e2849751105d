"""The drift detector's periodic training/serving skew check (:mod:`relearn.monitoring.skew`) and its gauges.

``relearn_feature_skew_ratio{track,feature}``, ``relearn_feature_skew_max_abs_difference{track,feature}``,
``relearn_feature_skew_rows{track}``, ``relearn_feature_skew_unmatched_rows{track}``,
``relearn_feature_skew_last_check_timestamp_seconds{track}`` and ``relearn_feature_skew_check_errors_total``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from relearn.monitoring.jobs import PeriodicJob
from relearn.monitoring.skew import SkewResult, check, log_result

log = logging.getLogger("relearn.monitoring.skew")


class SkewMetrics:
    """The ``relearn_feature_skew_*`` gauges on a registry (the detector's own)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("track",)) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        self.ratio = gauge(
            "relearn_feature_skew_ratio",
            "Share of sampled served rows whose model input differs from its offline recomputation.",
            ("track", "feature"),
        )
        self.max_abs = gauge(
            "relearn_feature_skew_max_abs_difference",
            "Largest |served - offline| of a numeric model input in the last sample.",
            ("track", "feature"),
        )
        self.rows = gauge("relearn_feature_skew_rows", "Served rows compared in the last check.")
        self.unmatched = gauge(
            "relearn_feature_skew_unmatched_rows", "Sampled rows whose transaction is not (yet) in the lake."
        )
        self.last = gauge(
            "relearn_feature_skew_last_check_timestamp_seconds", "Unix time of the last completed check."
        )
        self.errors = Counter(
            "relearn_feature_skew_check_errors",
            "Skew checks that failed (log or lake unreadable).",
            registry=registry,
        )

    def update(self, result: SkewResult) -> None:
        """Export one check's result."""
        for name, ratio in result.ratios.items():
            self.ratio.labels(result.track, name).set(ratio)
        for name, diff in result.max_abs_difference.items():
            self.max_abs.labels(result.track, name).set(diff)
        self.rows.labels(result.track).set(result.rows)
        self.unmatched.labels(result.track).set(result.unmatched)
        self.last.labels(result.track).set(result.checked_at)


class SkewJob(PeriodicJob):
    """Runs :func:`check` every ``interval_s`` in a daemon thread and exports the result."""

    def __init__(
        self, log_path: Path, lake_dir: Path, interval_s: float, metrics: SkewMetrics, **options: Any
    ) -> None:
        super().__init__("feature-skew", interval_s)
        self.args = (log_path, lake_dir, lake_dir)
        self.options = options
        self.metrics = metrics
        self.last: SkewResult | None = None

    def run_once(self) -> SkewResult | None:
        """One check, exported and logged (none before the first event: there is nothing to sample)."""
        if Path(self.args[0]).is_file():
            self.last = check(*self.args, **self.options)
            self.metrics.update(self.last)
            log_result(self.last, 0.0)
        return self.last

    def on_error(self) -> None:
        """The lake is being rewritten, a volume is gone: counted, and the next interval tries again."""
        self.metrics.errors.inc()
        log.exception("feature skew check failed")
