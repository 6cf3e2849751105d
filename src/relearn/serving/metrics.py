"""Prometheus metrics of the serving processes (``relearn_`` prefix, base units, bounded labels).

Labels: ``component`` (predictor / transformer), ``model_version``, ``stage``, ``outcome`` and ``track``
(small fixed sets). They live in prometheus-client's default registry, which KServe's ``/metrics`` endpoint
exports.

``track`` separates live traffic (``primary``) from requests mirrored to a shadow (``mirror``), so a version
that was a shadow and becomes a canary does not carry its mirrored requests into the canary's analysis
window. A request is a mirror the way Istio marks it (:func:`relearn.routing.track_of`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# The routing protocol's names, re-exported where callers found them before relearn.routing existed.
from relearn.routing import SHADOW_SUFFIX as SHADOW_SUFFIX
from relearn.routing import shadow_host as shadow_host
from relearn.routing import track_of as track_of

STAGES = ("feature_fetch", "transform", "predict")
OUTCOMES = ("ok", "invalid", "unavailable", "error")
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

STAGE_SECONDS = Histogram(
    "relearn_serving_stage_duration_seconds",
    "Latency of one serving stage for one request batch.",
    ["component", "stage", "model_version", "track"],
    buckets=_BUCKETS,
)
REQUESTS = Counter(
    "relearn_serving_requests_total",
    "Inference requests by outcome.",
    ["component", "outcome", "model_version", "track"],
)
ROWS = Counter(
    "relearn_serving_rows_total", "Rows (transactions) scored.", ["component", "model_version", "track"]
)
COLD_START = Counter(
    "relearn_serving_cold_start_lookups_total",
    "Rows whose user or merchant had no online features (defaults used).",
    ["model_version"],
)
FEATURE_FALLBACK = Counter(
    "relearn_serving_feature_fallback_rows_total",
    "Rows scored with cold-start defaults because the streaming state failed (feature_fallback on).",
    ["model_version"],
)
REJECTED_EVENTS = Counter(
    "relearn_feature_events_rejected_total",
    "Transactions refused by the streaming state (late beyond the bound, or from the future).",
    ["reason"],
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


@lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)`` (label values in the metric's label order), looked up once per label set.

    prometheus-client validates, converts and locks on every ``labels()`` call; the label sets are small and
    bounded, so the hot path keeps the children.
    """
    return metric.labels(*values)
