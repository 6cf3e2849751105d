"""Prometheus metrics of the serving processes (``relearn_`` prefix, base units, bounded labels).

Labels: ``component`` (predictor / transformer), ``model_version``, ``stage`` and ``outcome`` (small fixed
sets). They live in prometheus-client's default registry, which KServe's ``/metrics`` endpoint exports.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("feature_fetch", "transform", "predict")
OUTCOMES = ("ok", "invalid", "unavailable", "error")
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

STAGE_SECONDS = Histogram(
    "relearn_serving_stage_duration_seconds",
    "Latency of one serving stage for one request batch.",
    ["component", "stage", "model_version"],
    buckets=_BUCKETS,
)
REQUESTS = Counter(
    "relearn_serving_requests_total",
    "Inference requests by outcome.",
    ["component", "outcome", "model_version"],
)
ROWS = Counter("relearn_serving_rows_total", "Rows (transactions) scored.", ["component", "model_version"])
COLD_START = Counter(
    "relearn_serving_cold_start_lookups_total",
    "Rows whose user or merchant had no online features (defaults used).",
    ["model_version"],
)
LOG_QUEUE_DEPTH = Gauge(
    "relearn_payload_log_queue_depth", "Payload-logger events waiting to be sent.", ["component"]
)
LOG_DROPPED = Counter(
    "relearn_payload_log_dropped_total",
    "Payload-logger events dropped (queue full or sink failure).",
    ["component", "reason"],
)
LOG_SENT = Counter(
    "relearn_payload_log_sent_total", "Payload-logger events accepted by the sink.", ["component"]
)
