"""The demo report's facts: milestones, the traffic per phase, quality against the ground truth, summary.

Quality is measured on what the endpoint answered, against the simulated world's ground truth (every
chargeback that will ever arrive): before the drift, during it (the old champion), after the promoted
retrain (the new champion), and the old champion on the same requests as the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from relearn.demo.loop import Outcome
from relearn.demo.replay import failed, refused
from relearn.demo.respond import responses
from relearn.monitoring.quality import at_budget

OLD_ON_AFTER = "  old champion"  # the same requests as "after retrain", scored by the old champion


def milestones(outcome: Outcome) -> dict[str, dict[str, Any]]:
    """First onset, alert, retraining, deployment, canary, promotion and rollback (wall and stream time)."""
    out: dict[str, dict[str, Any]] = {}
    for event in outcome.timeline.events:
        kind = event["kind"]
        if kind == "rollout-state":
            continue
        out.setdefault(kind, event)
    for entry in outcome.audit:  # the controller's own moves, which the demo does not see directly
        if entry["action"] == "shadow-to-canary" and "canary-start" not in out:
            out["canary-start"] = {
                "wall": _audit_time(entry),
                "kind": "canary-start",
                "version": entry.get("version"),
            }
    return dict(sorted(out.items(), key=lambda item: item[1]["wall"]))


def _audit_time(entry: dict[str, Any]) -> float:
    return pd.Timestamp(entry["time"]).timestamp()


def phases(outcome: Outcome) -> dict[str, pd.DataFrame]:
    """Answered requests before the drift, during it (old champion) and after the promotion (new one)."""
    rows = outcome.records[outcome.records["code"] == 0]
    onset = pd.Timestamp(outcome.world.onset)
    marks = milestones(outcome)
    promoted = marks.get("promoted", {}).get("wall")
    before = rows[rows["event_timestamp"] < onset]
    during = rows[(rows["event_timestamp"] >= onset) & (rows["model_version"] == outcome.champion_before)]
    if promoted is not None:
        during = during[during["sent"] < promoted]
        after = rows[(rows["sent"] >= promoted) & (rows["model_version"] == outcome.champion_after)]
    else:
        after = rows.iloc[:0]
    return {"before drift": before, "during drift": during, "after retrain": after}


def quality(frame: pd.DataFrame, budget: float) -> dict[str, float]:
    """Precision and recall at the alert budget and PR-AUC of answered requests (ground truth labels)."""
    labels = frame["is_fraud"].to_numpy(bool)
    if len(frame) == 0 or labels.sum() == 0:
        return {
            "n": len(frame),
            "fraud": int(labels.sum()),
            "precision": np.nan,
            "recall": np.nan,
            "pr_auc": np.nan,
        }
    scores = frame["score"].to_numpy(float)
    precision, recall = at_budget(scores, labels, budget)
    return {
        "n": len(frame),
        "fraud": int(labels.sum()),
        "precision": precision,
        "recall": recall,
        "pr_auc": float(average_precision_score(labels, scores)),
    }


def lake_features(outcome: Outcome, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (served transactions) with the pandas engine's entity features at each one's time.

    These are the values the streaming state served (tests/features/test_stream_parity.py proves it),
    recomputed from the world's lake, which holds every transaction, scored or not.
    """
    from relearn.data import io
    from relearn.features.spec import MERCHANT_FEATURES, USER_FEATURES
    from relearn.features.transforms import entity_feature_tables
    from relearn.monitoring.simulate import asof_join

    until = frame["event_timestamp"].max()
    tx = io.read_transactions(outcome.world.source / "transactions")
    tx = tx[tx["event_timestamp"] <= until]
    users, merchants = entity_feature_tables(tx, io.read_labels(outcome.world.source / "labels"))
    out = asof_join(frame.assign(_order=np.arange(len(frame))), users, "user_id", USER_FEATURES)
    out = asof_join(out, merchants, "merchant_id", MERCHANT_FEATURES)
    return out.sort_values("_order").drop(columns="_order").set_axis(frame.index)


def old_champion_on(outcome: Outcome, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` scored by the champion before the retrain: what the promotion bought, same requests."""
    if frame.empty or outcome.champion_after == outcome.champion_before:
        return frame.iloc[:0]
    import mlflow

    from relearn.features.transforms import model_inputs
    from relearn.settings import RelearnSettings

    settings = RelearnSettings(home=outcome.home)
    mlflow.set_tracking_uri(settings.tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{outcome.champion_before}")
    inputs = model_inputs(lake_features(outcome, frame).reset_index(drop=True))
    return frame.assign(score=model.predict(inputs)["score"].to_numpy())


def recall_estimates(outcome: Outcome) -> list[tuple[float, float, float | None]]:
    """Per closed stable window: (wall time, recall at budget estimated from its scores, realized or None).

    The detector estimates each window's recall before any label (relearn.monitoring.estimate) and adds the
    realized value once the window's chargebacks matured; several model versions in one window count by
    their share of its predictions.
    """
    out = []
    for w in outcome.windows:
        estimate = {v: e for v, e in (w.get("estimate") or {}).items() if e.get("recall") is not None}
        if w["track"] != "stable" or not estimate:
            continue
        weights = {v: e["n"] for v, e in estimate.items()}
        total = sum(weights.values()) or 1
        est = sum(e["recall"] * weights[v] for v, e in estimate.items()) / total
        real = {v: r for v, r in (w.get("realized") or {}).items() if r.get("recall") is not None}
        realized = None
        if real and set(real) <= set(weights):
            realized = sum(r["recall"] * weights[v] for v, r in real.items()) / sum(weights[v] for v in real)
        out.append((w["wall"], est, realized))
    return out


def summary(outcome: Outcome) -> dict[str, Any]:
    """The numbers the report and the terminal table show (and the tests assert on)."""
    records = outcome.records
    marks = milestones(outcome)
    start = outcome.timeline.first("replay-start")["wall"]
    budget = outcome.settings.alert_budget
    drifted = [w for w in outcome.windows if w["track"] == "stable" and w.get("drift")]
    by_phase = phases(outcome)
    by_phase[OLD_ON_AFTER] = old_champion_on(outcome, by_phase["after retrain"])
    return {
        "scenario": outcome.settings.scenario,
        "requests": len(records),
        "failed": int(failed(records["code"], records["invalid"]).sum()),
        "refused": int(refused(records["code"], records["invalid"]).sum()),
        "answered": int((records["code"] >= 0).sum()),
        "champion_before": outcome.champion_before,
        "champion_after": outcome.champion_after,
        "quality": {name: quality(frame, budget) for name, frame in by_phase.items()},
        "milestones": {
            k: {"t_seconds": round(v["wall"] - start, 1), "sim": v.get("sim")} for k, v in marks.items()
        },
        "feature_skew": {
            k: v for k, v in (outcome.timeline.first("feature-skew") or {}).items() if k in ("rows", "skewed")
        },
        "feature_feed": {
            k: v
            for k, v in (outcome.timeline.first("replay-end") or {}).items()
            if k in ("fed", "chargebacks_fed", "feed_refused")
        },
        "gate": gate_line(outcome.timeline.events, outcome.champion_after),
        "responses": responses(outcome.timeline.events),
        "promotion_evidence": next(
            (e.get("evidence") for e in outcome.audit if e["action"] == "promote"), None
        ),
        "rollback": next((e.get("reason") for e in outcome.audit if e["action"] == "rollback"), None),
        "recall_estimate_mae": _mae(recall_estimates(outcome)),
        "drift_windows": len(drifted),
        "windows": len([w for w in outcome.windows if w["track"] == "stable"]),
        "ports_left_open": outcome.ports_left_open,
        "interrupted": outcome.interrupted,
    }


def gate_line(events: list[dict[str, Any]], champion_after: Any) -> str | None:
    """The training gate that mattered: the promoted version's, else the last retraining's; and how many."""
    ends = [e for e in events if e["kind"] == "retrain-end"]
    if not ends:
        return None
    end = next((e for e in ends if str(e.get("version")) == str(champion_after)), ends[-1])
    count = f"retraining {ends.index(end) + 1} of {len(ends)}" if len(ends) > 1 else "the retraining"
    return f"v{end.get('version')} ({count}): {end.get('gate')}"


def _mae(pairs: list[tuple[float, float, float | None]]) -> dict[str, Any]:
    """Error of the label-free recall estimate over the windows whose labels matured.

    Mean absolute, and mean signed (estimate - realized; > 0 overstates, as under concept drift).
    """
    diffs = [est - real for _, est, real in pairs if real is not None]
    if not diffs:
        return {"windows": 0, "mae": None, "bias": None}
    mae, bias = float(np.mean(np.abs(diffs))), float(np.mean(diffs))
    return {"windows": len(diffs), "mae": round(mae, 4), "bias": round(bias, 4)}
