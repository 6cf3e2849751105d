"""Shadow versus stable: the predictions two tracks made for the same requests, joined and compared.

The shadow receives mirrored requests and logs its own predictions (payload-logger CloudEvents, see
:mod:`relearn.events`); its responses never reach clients. Response events of the ``stable`` and the
``shadow`` track are joined by request: by ``ce-id`` (KServe's logger uses the request id, which Istio's
mirror keeps) or, with ``key="transaction_id"``, by the transaction ids of the request events. Rows of a
batch pair up in order. From the pairs come

* **agreement**: share of requests where both take the same decision (``score >= threshold``);
* **mean absolute difference** of the scores, and the **KS statistic** between the two score samples.

This is the measurement both sides need: the drift detector serves it over its own inference log
(``GET /v1/shadow``) and :mod:`relearn.rollout.shadow` gates a shadow's move to canary on it. It needs no
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

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.monitoring.payloads import ID_FIELD, Event, Rejected, parse_response


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
