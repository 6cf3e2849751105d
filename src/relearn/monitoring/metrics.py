"""Prometheus metrics of the drift detector (own registry).

Bounded labels: track, feature, reason, kind, and model_version (only the versions in the rolling quality
windows are exported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """Every metric the detector exports on ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.ingested = Counter(
            "relearn_drift_events_ingested", "Accepted payload-logger events.", ["track", "type"], registry=r
        )
        self.rejected = Counter("relearn_drift_events_rejected", "Refused events.", ["reason"], registry=r)
        self.ingest_latency = Histogram(
            "relearn_drift_ingest_latency_seconds",
            "Time from receipt to durable append.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.p_value = Gauge(
            "relearn_drift_p_value", "Last window's p-value per feature.", ["track", "feature"], registry=r
        )
        self.detected = Counter(
            "relearn_drift_detected", "Windows with drift.", ["track", "kind"], registry=r
        )
        self.quality_drops = Counter(
            "relearn_drift_quality_drops",
            "Label updates that raised a model-quality incident (recall drop, floors, prevalence).",
            ["track"],
            registry=r,
        )
        self.score_divergence = Gauge(
            "relearn_drift_score_divergence",
            "Two-sample KS statistic (0-1) of the last closed canary/shadow window's scores against the"
            " last closed stable window's.",
            ["track"],
            registry=r,
        )
        self.windows = Counter("relearn_drift_windows", "Completed windows.", ["track"], registry=r)
        self.window_size = Gauge(
            "relearn_drift_window_size", "Events in the last completed window.", ["track"], registry=r
        )
        self.window_fill = Gauge(
            "relearn_drift_window_fill", "Events in the current window so far.", ["track"], registry=r
        )
        self.labels = Counter("relearn_drift_labels_received", "Delayed labels received.", registry=r)
        self.pending_dropped = Counter(
            "relearn_drift_pending_dropped",
            "Requests (or responses) dropped before their pair came (reason: ttl, capacity, response_ttl, "
            "response_capacity).",
            ["reason"],
            registry=r,
        )
        self.label_lag = Histogram(
            "relearn_drift_label_join_lag_seconds",
            "Label time minus prediction time for joined labels.",
            buckets=(3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 60 * 86400),
            registry=r,
        )
        self.precision = Gauge(
            "relearn_drift_model_precision_at_budget",
            "Rolling precision at the alert budget.",
            ["track"],
            registry=r,
        )
        self.recall = Gauge(
            "relearn_drift_model_recall_at_budget",
            "Rolling recall at the alert budget.",
            ["track"],
            registry=r,
        )

        # Per model version: what the rollout controller's label gates compare (canary vs stable).
        def per_version(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, ["track", "model_version"], registry=r)

        self.version_labelled = per_version(
            "relearn_drift_version_labelled_predictions",
            "Labelled predictions in the version's rolling quality window.",
        )
        self.version_precision = per_version(
            "relearn_drift_version_precision_at_budget",
            "Rolling precision at the alert budget of one model version.",
        )
        self.version_recall = per_version(
            "relearn_drift_version_recall_at_budget",
            "Rolling recall at the alert budget of one model version.",
        )
        self.version_reviewed = per_version(
            "relearn_drift_version_reviewed_predictions",
            "Predictions in the version's reviewed top alert-budget share (the trials of its precision).",
        )
        self.version_frauds = per_version(
            "relearn_drift_version_frauds",
            "Frauds among the version's labelled predictions (the trials of its recall).",
        )
        # Label-free (relearn.monitoring.estimate): per closed window, before chargebacks arrive.
        self.estimated_precision = per_version(
            "relearn_drift_estimated_precision_at_budget",
            "Precision at the alert budget of the last closed window, estimated from calibrated scores.",
        )
        self.estimated_recall = per_version(
            "relearn_drift_estimated_recall_at_budget",
            "Recall at the alert budget of the last closed window, estimated from calibrated scores.",
        )
        self.prevalence = Gauge(
            "relearn_drift_label_prevalence",
            "Fraud share among the labelled predictions of the rolling quality window.",
            ["track"],
            registry=r,
        )
        self.pr_auc = Gauge("relearn_drift_model_pr_auc", "Rolling PR-AUC.", ["track"], registry=r)
        self.triggers = Counter(
            "relearn_drift_triggers", "Incidents by outcome (fired, suppressed).", ["result"], registry=r
        )
        self.retrain_triggers = Counter(
            "relearn_drift_retrain_triggers",
            "Incidents by reason (drift, quality, schedule, volume) and outcome (fired, suppressed).",
            ["reason", "result"],
            registry=r,
        )
        self.responses = Counter(
            "relearn_drift_responses",
            "Fired incidents by the response chosen (retrain, recalibrate, page).",
            ["response"],
            registry=r,
        )
        self.reference_version = Gauge(
            "relearn_drift_reference_version", "Model version whose reference is loaded.", registry=r
        )
        self.ready = Gauge("relearn_drift_detector_ready", "1 once the reference is loaded.", registry=r)
        self.relayed = Counter(
            "relearn_drift_relayed_events", "Events the monitor took from the ingest replicas' shared log.",
            registry=r,
        )  # fmt: skip
        self.relay_lag = Gauge(
            "relearn_drift_relay_lag_seconds",
            "Age of the newest event of the last relay step (how far the monitor is behind the replicas).",
            registry=r,
        )
        self.shared_backlog = Gauge(
            "relearn_drift_shared_log_backlog_events",
            "Events in the shared log not yet relayed by the monitor (PostgreSQL's live-row estimate).",
            registry=r,
        )
        self.relay_leader = Gauge(
            "relearn_drift_relay_leader", "1 if this monitor holds the relay lock (one relays).", registry=r
        )
