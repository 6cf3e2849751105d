"""Prometheus for the canary analysis: one PromQL per gate and the window's :class:`Snapshot`.

Instant queries over the HTTP API (``/api/v1/query``), selected by the ``model_version`` label of the
serving metrics (live traffic only) and the ``track`` and ``model_version`` labels of the drift detector's.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import httpx

from relearn.errors import Unavailable
from relearn.rollout.analysis import Snapshot


class QuerySettings(Protocol):
    """What the queries take from the controller's settings."""

    component: str
    window: str
    drift_p_value: float


# One PromQL per gate. Placeholders: {component}, {version} (model_version label), {window} (range),
# {track} (drift detector track), {p} (p-value under which a feature counts as drifted).
# Live traffic only: requests mirrored to a shadow (track="mirror", see relearn.serving.metrics) and, in a
# cluster, every pod of the shadow InferenceService (relearn_io_role="shadow", a target label of the
# ServiceMonitor; it also covers gRPC mirrors, whose :authority Python servers cannot read) stay out of a
# version's canary windows. Series without these labels match.
_SEL = 'component="{component}",model_version="{version}",track!="mirror",relearn_io_role!="shadow"'
_ERR = _SEL + ',outcome=~"error|unavailable"'
_VERSION = 'track="{track}",model_version="{version}"'
QUERIES: dict[str, str] = {
    "requests": "sum(increase(relearn_serving_requests_total{{" + _SEL + "}}[{window}]))",
    "error_rate": "sum(rate(relearn_serving_requests_total{{" + _ERR + "}}[{window}]))"
    " / sum(rate(relearn_serving_requests_total{{" + _SEL + "}}[{window}]))",
    "p99_seconds": "max(histogram_quantile(0.99, sum by (le, stage) "
    "(rate(relearn_serving_stage_duration_seconds_bucket{{" + _SEL + "}}[{window}]))))",
    "score_divergence": 'max(relearn_drift_score_divergence{{track="{track}"}})',
    "drift_share": 'count(relearn_drift_p_value{{track="{track}"}} < {p})'
    ' / count(relearn_drift_p_value{{track="{track}"}})',
    "labelled": "max(relearn_drift_version_labelled_predictions{{" + _VERSION + "}})",
    "precision": "max(relearn_drift_version_precision_at_budget{{" + _VERSION + "}})",
    "recall": "max(relearn_drift_version_recall_at_budget{{" + _VERSION + "}})",
    "reviewed": "max(relearn_drift_version_reviewed_predictions{{" + _VERSION + "}})",
    "frauds": "max(relearn_drift_version_frauds{{" + _VERSION + "}})",
}


class PrometheusError(Unavailable, RuntimeError):
    """Prometheus could not answer a query (unreachable, bad query, error status): 503, retry later."""


class Prometheus:
    """Instant queries over the HTTP API (``GET /api/v1/query``).

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:9090``.
        timeout: Seconds per query.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The value of a query returning one sample (a scalar or a one-element vector).

        Returns:
            The value, or None for an empty result or NaN (e.g. a rate over a series with no samples).

        Raises:
            PrometheusError: Unreachable server, error status or a result with several series.
        """
        try:
            resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"query failed: {exc}") from exc
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', resp.status_code)}: {body.get('error', '')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            raw = data["result"][1]
        elif data["resultType"] == "vector":
            if not data["result"]:
                return None
            if len(data["result"]) > 1:
                raise PrometheusError(f"expected one series, got {len(data['result'])}: {promql}")
            raw = data["result"][0]["value"][1]
        else:
            raise PrometheusError(f"unexpected result type {data['resultType']}")
        value = float(raw)
        return None if math.isnan(value) else value


def render(gate: str, settings: QuerySettings, *, version: str | None = None, track: str = "") -> str:
    """The PromQL of one gate for a version (serving metrics) or a track (drift metrics)."""
    return QUERIES[gate].format(
        component=settings.component,
        version=version or "",
        window=settings.window,
        track=track,
        p=settings.drift_p_value,
    )


def read_snapshot(prometheus: Prometheus, settings: QuerySettings, stable: str, canary: str) -> Snapshot:
    """One analysis window of the canary against the stable version.

    Missing series count as zero (no traffic, no errors, no drift); the label gates compare the canary
    version's precision and recall with the stable version's, with their trials (reviewed predictions,
    frauds), once the drift detector publishes them (it does per version once 50 of its predictions are
    labelled) and ``min_labels`` canary predictions are.
    """

    def q(gate: str, **kw: Any) -> float | None:
        return prometheus.query(render(gate, settings, **kw))

    versions = {"canary": canary, "stable": stable}
    label = {
        (gate, t): q(gate, track=t, version=v)
        for gate in ("precision", "recall", "reviewed", "frauds")
        for t, v in versions.items()
    }
    return Snapshot(
        canary_requests=round(q("requests", version=canary) or 0),
        canary_error_rate=q("error_rate", version=canary) or 0.0,
        stable_error_rate=q("error_rate", version=stable) or 0.0,
        canary_p99_seconds=q("p99_seconds", version=canary) or 0.0,
        score_divergence=q("score_divergence", track="canary") or 0.0,
        canary_drift_share=q("drift_share", track="canary") or 0.0,
        stable_drift_share=q("drift_share", track="stable") or 0.0,
        labels=round(q("labelled", track="canary", version=canary) or 0),
        canary_precision=label["precision", "canary"],
        stable_precision=label["precision", "stable"],
        canary_recall=label["recall", "canary"],
        stable_recall=label["recall", "stable"],
        canary_reviewed=round(label["reviewed", "canary"] or 0),
        stable_reviewed=round(label["reviewed", "stable"] or 0),
        canary_frauds=round(label["frauds", "canary"] or 0),
        stable_frauds=round(label["frauds", "stable"] or 0),
    )
