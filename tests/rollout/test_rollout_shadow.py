"""Shadow comparison: fabricated stable/shadow event pairs with known agreement and divergence."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
from relearn.monitoring.payloads import Event
from relearn.rollout.shadow import (
    Comparison,
    ShadowMetrics,
    ShadowSettings,
    compare,
    comparison_of,
    evaluate,
    events_from_log,
    join,
    ks_statistic,
    shadow_ready,
)

N = 400


def _v2_response(scores: list[float]) -> bytes:
    return json.dumps(
        {
            "model_name": "fraud",
            "outputs": [{"name": "score", "shape": [len(scores), 1], "datatype": "FP32", "data": scores}],
        }
    ).encode()


def _v1_response(scores: list[float]) -> bytes:
    return json.dumps({"predictions": [{"score": s, "decision": s >= 0.5} for s in scores]}).encode()


def _events(stable: np.ndarray, shadow: np.ndarray, *, batch: int = 1) -> list[Event]:
    """Stable responses in v2, shadow responses in v1, shadow events in reverse order (arrival differs)."""
    out, shadow_out = [], []
    for start in range(0, len(stable), batch):
        ce = f"req-{start}"
        out.append(Event(ce, REQUEST_TYPE, "stable", "", b"{}"))
        out.append(
            Event(ce, RESPONSE_TYPE, "stable", "", _v2_response(stable[start : start + batch].tolist()))
        )
        shadow_out.append(
            Event(ce, RESPONSE_TYPE, "shadow", "", _v1_response(shadow[start : start + batch].tolist()))
        )
    return out + shadow_out[::-1]


def _scores(flip: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stable scores away from 0.5; the shadow equals them except ``flip`` rows moved across 0.5."""
    stable = np.where(rng.random(N) < 0.5, rng.uniform(0.0, 0.4, N), rng.uniform(0.6, 1.0, N)).round(4)
    shadow = stable.copy()
    shadow[:flip] = np.where(stable[:flip] >= 0.5, stable[:flip] - 0.5, stable[:flip] + 0.5)
    return stable, shadow


def test_identical_shadow_agrees_fully_and_passes() -> None:
    stable, shadow = _scores(0, np.random.default_rng(0))
    comparison, ready, reason = evaluate(_events(stable, shadow, batch=4))
    assert comparison.pairs == N and comparison.unmatched == 0
    assert comparison.agreement == 1.0 and comparison.mean_abs_diff == pytest.approx(0, abs=1e-6)
    assert comparison.ks == pytest.approx(0, abs=1e-9)
    assert ready, reason


def test_known_agreement_and_divergence() -> None:
    stable, shadow = _scores(20, np.random.default_rng(1))  # 20 of 400 decisions flip: agreement 0.95
    pairs, unmatched = join(_events(stable, shadow))
    c = compare(pairs, threshold=0.5, unmatched=unmatched)
    assert c.pairs == N and c.agreement == pytest.approx(0.95)
    assert c.mean_abs_diff == pytest.approx(20 * 0.5 / N, rel=1e-4)
    assert c.ks == pytest.approx(ks_statistic(stable, shadow))
    ready, reason = shadow_ready(c, ShadowSettings(min_agreement=0.98))
    assert not ready and "agreement 0.95 < 0.98" in reason
    assert shadow_ready(c, ShadowSettings(min_agreement=0.95, max_mean_abs_diff=0.025, max_ks=1.0))[0], (
        "limits are inclusive"
    )


def test_shifted_scores_fail_on_divergence_not_agreement() -> None:
    rng = np.random.default_rng(2)
    stable = rng.uniform(0.0, 0.3, N)
    shadow = stable + 0.15  # same decisions at 0.5, a shifted distribution
    c, ready, reason = evaluate(_events(stable, shadow))
    assert c.agreement == 1.0 and c.mean_abs_diff == pytest.approx(0.15)
    assert c.ks == pytest.approx(0.5, abs=0.06)
    assert not ready and "mean abs score difference" in reason and "KS" in reason


def test_too_few_pairs_and_unmatched_requests() -> None:
    stable, shadow = _scores(0, np.random.default_rng(3))
    events = _events(stable, shadow)
    shadow_only = [e for e in events if e.track == "shadow"][:150]  # the mirror saw 150 of 400 requests
    c, ready, reason = evaluate([e for e in events if e.track == "stable"] + shadow_only)
    assert c.pairs == 150 and c.unmatched == N - 150
    assert not ready and "only 150 joined predictions < 200" in reason
    empty = compare([])
    assert empty.pairs == 0 and not shadow_ready(empty)[0]


def test_join_by_transaction_id() -> None:
    """Different ce-ids (each logger made its own), same transactions: joined through the requests."""
    events = []
    for i in range(3):
        tids = [f"t{i}a", f"t{i}b"]
        v1_request = {"instances": [{"transaction_id": t} for t in tids]}
        v2_request = {
            "inputs": [{"name": "transaction_id", "shape": [2], "datatype": "BYTES", "data": tids[::-1]}]
        }
        events += [
            Event(f"s{i}", REQUEST_TYPE, "stable", "", json.dumps(v1_request).encode()),
            Event(f"s{i}", RESPONSE_TYPE, "stable", "", _v1_response([0.1, 0.9])),
            Event(f"m{i}", REQUEST_TYPE, "shadow", "", json.dumps(v2_request).encode()),
            Event(f"m{i}", RESPONSE_TYPE, "shadow", "", _v2_response([0.8, 0.2])),
        ]
    pairs, unmatched = join(events, key="transaction_id")
    assert sorted(pairs) == [(0.1, 0.2)] * 3 + [(0.9, 0.8)] * 3 and unmatched == 0
    assert join(events)[0] == [], "ce-ids differ: nothing joins by ce_id"


def test_gauges_and_inference_log(tmp_path: Path) -> None:
    stable, shadow = _scores(20, np.random.default_rng(4))
    db = tmp_path / "inference.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, ce_id TEXT NOT NULL, type TEXT NOT NULL, "
        "track TEXT NOT NULL, time TEXT NOT NULL, received REAL NOT NULL, body BLOB NOT NULL)"
    )  # the drift detector's schema (relearn.monitoring.store)
    conn.executemany(
        "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, ?, ?, ?, 0, ?)",
        [(e.ce_id, e.type, e.track, e.time, e.body) for e in _events(stable, shadow)],
    )
    conn.commit()
    conn.close()
    metrics = ShadowMetrics()
    c, ready, _ = evaluate(events_from_log(db), metrics=metrics)
    assert isinstance(c, Comparison) and c.agreement == pytest.approx(0.95) and not ready
    text = generate_latest(metrics.registry).decode()
    assert 'relearn_rollout_shadow_agreement{track="shadow"} 0.95' in text
    assert f'relearn_rollout_shadow_pairs{{track="shadow"}} {float(N)}' in text
    assert 'relearn_rollout_shadow_ready{track="shadow"} 0.0' in text
    assert 'relearn_rollout_score_ks{track="shadow"}' in text


def test_earlier_shadow_versions_are_left_out() -> None:
    """The log keeps every earlier shadow's predictions: a shadow is compared on its own only."""
    rng = np.random.default_rng(5)
    stable, _ = _scores(0, rng)
    events = []
    for i, score in enumerate(stable):
        version, shadow = ("2", score) if i % 2 else ("7", 1.0 - score)  # v7 disagrees everywhere
        events.append(Event(f"r{i}", RESPONSE_TYPE, "stable", "", _v1_response([float(score)])))
        body = json.dumps({"predictions": [{"score": float(shadow)}], "model_version": version}).encode()
        events.append(Event(f"r{i}", RESPONSE_TYPE, "shadow", "", body))
    mixed = comparison_of(events)
    assert mixed.pairs == N and mixed.agreement == pytest.approx(0.5)
    own = comparison_of(events, shadow_version="2")
    assert own.pairs == N // 2 and own.agreement == 1.0 and own.unmatched == N // 2


def test_comparison_travels_as_json() -> None:
    """The detector answers ``GET /v1/shadow`` with :meth:`Comparison.to_dict`; NaN travels as null."""
    stable, shadow = _scores(20, np.random.default_rng(6))
    for c in (comparison_of(_events(stable, shadow)), compare([])):
        data = json.loads(json.dumps(c.to_dict(), allow_nan=False))
        back = Comparison.from_dict({**data, "threshold": 0.5})
        assert back.pairs == c.pairs and (back.agreement == c.agreement or np.isnan(c.agreement))
