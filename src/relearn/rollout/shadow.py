"""Shadow comparison: stable and shadow predictions of the same requests, as metrics and as a gate.

The shadow receives mirrored requests and logs its own predictions (payload-logger CloudEvents, see
:mod:`relearn.events`); its responses never reach clients. Response events of the ``stable`` and the
``shadow`` track are joined by request: by ``ce-id`` (KServe's logger uses the request id, which Istio's
mirror keeps) or, with ``key="transaction_id"``, by the transaction ids of the request events. Rows of a
batch pair up in order. From the pairs come

* **agreement**: share of requests where both take the same decision (``score >= threshold``);
* **mean absolute difference** of the scores, and the **KS statistic** between the two score samples.

They are exported as gauges (``relearn_rollout_shadow_*`` and ``relearn_rollout_score_ks{track}``; the
controller's canary score-divergence gate reads the drift detector's ``relearn_drift_score_divergence``)
and checked by :func:`shadow_ready` before a shadow is moved to canary. The events come from the drift
detector's inference log (:func:`events_from_log`) or from any iterable of
:class:`relearn.monitoring.payloads.Event`-like objects. In a cluster the controller cannot open that log
(the detector's volume is ReadWriteOnce): the detector serves :func:`comparison_of` its log as
``GET /v1/shadow`` and the controller reads it with :func:`detector_comparison`. This module needs no
torch, KServe or Feast: the detector's own environment (numpy<2) imports it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.monitoring.payloads import ID_FIELD, Event, Rejected, parse_response


class ShadowSettings(BaseSettings):
    """The shadow → canary gate (environment: RELEARN_ROLLOUT_SHADOW_<OPTION>)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_ROLLOUT_SHADOW_", extra="ignore")

    threshold: float = Field(0.5, description="Decision threshold applied to both scores.")
    min_pairs: int = Field(200, description="Joined predictions needed before the gate can pass.")
    min_agreement: float = Field(0.98, description="Lowest share of equal decisions.")
    max_mean_abs_diff: float = Field(0.05, description="Highest mean absolute score difference.")
    max_ks: float = Field(0.1, description="Highest KS statistic between the score samples.")


@dataclass(frozen=True)
class Comparison:
    """Shadow versus stable over the joined predictions."""

    pairs: int
    agreement: float
    mean_abs_diff: float
    ks: float
    stable_positive_rate: float
    shadow_positive_rate: float
    unmatched: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: undefined values (NaN, no pairs yet) become null."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{f.name: math.nan if data[f.name] is None else data[f.name] for f in fields(cls)})


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _field(event: Any, name: str, index: int) -> Any:
    return getattr(event, name) if hasattr(event, name) else event[index]


def request_ids(body: bytes) -> list[Any]:
    """Transaction ids of a v1 (``instances[].transaction_id``) or v2 (BYTES input) request, in row order."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise Rejected("bad_body", f"request body is not JSON: {exc}") from exc
    if isinstance(payload, dict) and isinstance(payload.get("instances"), list):
        return [row.get(ID_FIELD) if isinstance(row, dict) else None for row in payload["instances"]]
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), list):
        for tensor in payload["inputs"]:
            if isinstance(tensor, dict) and tensor.get("name") == ID_FIELD:
                data = tensor.get("data") or []
                return [v[0] if isinstance(v, list) and v else v for v in data]
    return []


def join(
    events: Iterable[Any],
    *,
    stable_track: str = "stable",
    shadow_track: str = "shadow",
    key: Literal["ce_id", "transaction_id"] = "ce_id",
    shadow_version: str | None = None,
) -> tuple[list[tuple[float, float]], int]:
    """Pair stable and shadow scores of the same request.

    Args:
        events: :class:`~relearn.monitoring.payloads.Event` objects or ``(ce_id, type, track, time, body)``
            tuples; unparseable bodies are skipped.
        stable_track: Track of the reference predictions.
        shadow_track: Track of the compared predictions.
        key: Join by ``ce_id`` (row by row within a request) or by the requests' ``transaction_id``.
        shadow_version: Skip shadow responses that name another ``model_version`` (an earlier shadow's).

    Returns:
        ``[(stable_score, shadow_score), ...]`` and how many scored rows found no partner.
    """
    ids: dict[tuple[str, str], list[Any]] = {}
    scores: dict[str, dict[Any, float]] = {stable_track: {}, shadow_track: {}}
    responses: list[tuple[str, str, list[float]]] = []
    for ev in events:
        ce_id, kind, track = _field(ev, "ce_id", 0), _field(ev, "type", 1), _field(ev, "track", 2)
        body = _field(ev, "body", 4)
        if track not in scores:
            continue
        body = body.encode() if isinstance(body, str) else bytes(body)
        try:
            if kind == REQUEST_TYPE and key == "transaction_id":
                ids[(track, ce_id)] = request_ids(body)
            elif kind == RESPONSE_TYPE:
                values, version = parse_response(body)
                if track == shadow_track and shadow_version and version and version != shadow_version:
                    continue  # an earlier shadow's prediction
                responses.append((track, ce_id, values))
        except Rejected:
            continue
    for track, ce_id, values in responses:
        if key == "transaction_id":
            keys = ids.get((track, ce_id)) or []
            for k, v in zip(keys, values, strict=False):
                if k:
                    scores[track][k] = v
        else:
            for i, v in enumerate(values):
                scores[track][(ce_id, i)] = v
    stable, shadow = scores[stable_track], scores[shadow_track]
    common = [k for k in stable if k in shadow]
    unmatched = len(stable) + len(shadow) - 2 * len(common)
    return [(stable[k], shadow[k]) for k in common], unmatched


def compare(pairs: list[tuple[float, float]], threshold: float = 0.5, unmatched: int = 0) -> Comparison:
    """Agreement at ``threshold``, mean absolute difference and KS statistic of joined scores."""
    if not pairs:
        return Comparison(0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), unmatched)
    arr = np.asarray(pairs, float)
    stable, shadow = arr[:, 0], arr[:, 1]
    d_stable, d_shadow = stable >= threshold, shadow >= threshold
    return Comparison(
        pairs=len(arr),
        agreement=float(np.mean(d_stable == d_shadow)),
        mean_abs_diff=float(np.mean(np.abs(stable - shadow))),
        ks=ks_statistic(stable, shadow),
        stable_positive_rate=float(np.mean(d_stable)),
        shadow_positive_rate=float(np.mean(d_shadow)),
        unmatched=unmatched,
    )


def shadow_ready(comparison: Comparison, settings: ShadowSettings | None = None) -> tuple[bool, str]:
    """The gate before a shadow becomes a canary: enough pairs, agreement and divergence within limits.

    Limits are inclusive (a value equal to its limit passes).

    Returns:
        ``(passed, reason)``; the reason lists every failed check, or summarises the comparison.
    """
    s = settings or ShadowSettings()
    c = comparison
    if c.pairs < s.min_pairs:
        return False, f"only {c.pairs} joined predictions < {s.min_pairs}"
    failed = []
    if c.agreement < s.min_agreement:
        failed.append(f"agreement {c.agreement:.4g} < {s.min_agreement:g}")
    if c.mean_abs_diff > s.max_mean_abs_diff:
        failed.append(f"mean abs score difference {c.mean_abs_diff:.4g} > {s.max_mean_abs_diff:g}")
    if c.ks > s.max_ks:
        failed.append(f"KS {c.ks:.4g} > {s.max_ks:g}")
    if failed:
        return False, "; ".join(failed)
    return (
        True,
        f"{c.pairs} pairs: agreement {c.agreement:.4g}, mean abs diff {c.mean_abs_diff:.4g}, KS {c.ks:.4g}",
    )


class ShadowMetrics:
    """Gauges of the last comparison (own registry by default; bounded label ``track``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.pairs = Gauge(
            "relearn_rollout_shadow_pairs", "Joined predictions compared.", ["track"], registry=r
        )
        self.agreement = Gauge(
            "relearn_rollout_shadow_agreement",
            "Share of equal decisions at the threshold.",
            ["track"],
            registry=r,
        )
        self.mae = Gauge(
            "relearn_rollout_shadow_score_mean_abs_diff",
            "Mean absolute score difference.",
            ["track"],
            registry=r,
        )
        self.ks = Gauge(
            "relearn_rollout_score_ks",
            "KS statistic of the track's scores versus stable.",
            ["track"],
            registry=r,
        )
        self.ready = Gauge(
            "relearn_rollout_shadow_ready", "1 when the shadow passes the canary gate.", ["track"], registry=r
        )

    def update(self, comparison: Comparison, ready: bool, track: str = "shadow") -> None:
        """Publish one comparison."""
        self.pairs.labels(track).set(comparison.pairs)
        self.agreement.labels(track).set(comparison.agreement)
        self.mae.labels(track).set(comparison.mean_abs_diff)
        self.ks.labels(track).set(comparison.ks)
        self.ready.labels(track).set(1.0 if ready else 0.0)


def comparison_of(
    events: Iterable[Any],
    threshold: float = 0.5,
    *,
    key: Literal["ce_id", "transaction_id"] = "ce_id",
    shadow_version: str | None = None,
) -> Comparison:
    """:func:`join` then :func:`compare`: the shadow comparison of a stream of logged events."""
    pairs, unmatched = join(events, key=key, shadow_version=shadow_version)
    return compare(pairs, threshold, unmatched)


def detector_comparison(
    url: str, version: str | None, settings: ShadowSettings | None = None, timeout: float = 10.0
) -> Comparison:
    """The drift detector's comparison of shadow ``version`` with stable (``GET <url>/v1/shadow``).

    Raises:
        httpx.HTTPError: The detector is unreachable or answers an error.
    """
    import httpx

    params: dict[str, Any] = {"threshold": (settings or ShadowSettings()).threshold}
    if version is not None:
        params["version"] = version
    resp = httpx.get(f"{url.rstrip('/')}/v1/shadow", params=params, timeout=timeout)
    resp.raise_for_status()
    return Comparison.from_dict(resp.json())


def events_from_log(path: Path | str, *, limit: int = 200_000) -> list[Event]:
    """The newest ``limit`` events of the drift detector's inference log (SQLite, read-only)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ce_id, type, track, time, body FROM events ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
    finally:
        conn.close()
    return [Event(ce_id=r[0], type=r[1], track=r[2], time=r[3], body=bytes(r[4])) for r in reversed(rows)]


def evaluate(
    events: Iterable[Any],
    settings: ShadowSettings | None = None,
    *,
    metrics: ShadowMetrics | None = None,
    key: Literal["ce_id", "transaction_id"] = "ce_id",
    shadow_version: str | None = None,
) -> tuple[Comparison, bool, str]:
    """Join, compare, gate and (optionally) publish: the whole shadow check in one call."""
    s = settings or ShadowSettings()
    comparison = comparison_of(events, s.threshold, key=key, shadow_version=shadow_version)
    ready, reason = shadow_ready(comparison, s)
    if metrics is not None:
        metrics.update(comparison, ready)
    return comparison, ready, reason
