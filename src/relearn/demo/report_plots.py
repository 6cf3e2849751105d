"""The demo report's plots: traffic and latency, drift p-values, quality, and the rollout, as PNG files.

Each is drawn over the seconds since the replay started, with the run's milestones (onset, alert,
retraining, shadow, canary, promotion or rollback) as vertical lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relearn.demo.loop import Outcome
from relearn.demo.replay import failed, refused
from relearn.demo.report_facts import milestones, quality, recall_estimates
from relearn.model.report import pyplot, save_figure

MARKERS = {  # timeline kind → (label, colour) drawn as vertical lines
    "onset": ("drift onset", "tab:red"),
    "alert": ("alert", "tab:orange"),
    "retrain-start": ("retraining", "tab:purple"),
    "deploy": ("shadow", "tab:gray"),
    "canary-start": ("canary", "tab:blue"),
    "promoted": ("promoted", "tab:green"),
    "rolled-back": ("rolled back", "black"),
    "paged": ("paged", "tab:brown"),
}


def _markers(ax: Any, outcome: Outcome, start: float) -> None:
    for kind, event in milestones(outcome).items():
        if kind in MARKERS:
            label, colour = MARKERS[kind]
            ax.axvline(event["wall"] - start, color=colour, ls="--", lw=1.2, label=label)


def plot_traffic(outcome: Outcome, path: Path) -> Path:
    """Requests per second by serving version, and p50/p99 latency, over the run."""
    plt = pyplot()
    r = outcome.records.dropna(subset=["sent"])
    start = outcome.timeline.first("replay-start")["wall"]
    t = (r["sent"] - start) // 5 * 5
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ok = r["code"] == 0
    counts = r[ok].groupby([t[ok], r.loc[ok, "model_version"]]).size().unstack(fill_value=0) / 5
    for version in counts.columns:
        top.plot(counts.index, counts[version], label=f"v{version}")
    for mask, style, label in (
        (failed(r["code"], r["invalid"]), "r.", "failed"),
        (refused(r["code"], r["invalid"]), "k.", "refused (data contract)"),
    ):
        per_s = r[mask].groupby(t[mask]).size() / 5
        if len(per_s):
            top.plot(per_s.index, per_s.values, style, label=label)
    top.set_ylabel("requests/s")
    top.set_ylim(bottom=0)
    _markers(top, outcome, start)
    top.legend(loc="upper left", fontsize=8, ncol=4)
    latency = r[ok].groupby(t[ok])["latency_s"]
    bottom.plot(latency.quantile(0.5).index, latency.quantile(0.5) * 1000, label="p50")
    bottom.plot(latency.quantile(0.99).index, latency.quantile(0.99) * 1000, label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since the replay started")
    bottom.legend(loc="upper left", fontsize=8)
    _markers(bottom, outcome, start)
    return save_figure(fig, path)


def plot_drift(outcome: Outcome, path: Path) -> Path:
    """Drift p-value of every feature per window on stable traffic, with the onset marked."""
    plt = pyplot()
    start = outcome.timeline.first("replay-start")["wall"]
    windows = [w for w in outcome.windows if w["track"] == "stable"]
    fig, ax = plt.subplots(figsize=(12, 5))
    if windows:
        times = [w["wall"] - start for w in windows]
        names = sorted({n for w in windows for n in w["p_values"]})
        cmap = plt.get_cmap("tab20")
        for i, name in enumerate(names):
            values = [max(w["p_values"].get(name, np.nan) or np.nan, 1e-12) for w in windows]
            ax.plot(times, values, ".-", lw=0.8, ms=3, color=cmap(i % 20), label=name)
        drifted = [t for t, w in zip(times, windows, strict=True) if w.get("drift")]
        ax.plot(drifted, [1e-12] * len(drifted), "rv", ms=8, label="window flagged")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6, frameon=False)
    ax.set_yscale("log")
    ax.set_ylabel("p-value (per feature)")
    ax.set_xlabel("seconds since the replay started (window closed)")
    _markers(ax, outcome, start)
    return save_figure(fig, path)


def plot_quality(outcome: Outcome, path: Path) -> Path:
    """PR-AUC and recall at the budget per stream day (ground truth), and the detector's own estimate."""
    plt = pyplot()
    start = outcome.timeline.first("replay-start")["wall"]
    r = outcome.records[outcome.records["code"] == 0].dropna(subset=["score"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if len(r):
        rows = []
        for _, day in r.groupby(r["event_timestamp"].dt.floor("D")):
            q = quality(day, outcome.settings.alert_budget)
            rows.append((day["sent"].mean() - start, q["pr_auc"], q["recall"]))
        x, pr_auc, recall = zip(*rows, strict=True)
        ax.plot(x, pr_auc, "o-", label="PR-AUC per stream day (ground truth)")
        ax.plot(x, recall, "s-", label="recall at budget per stream day (ground truth)")
    estimate = [(q["wall"] - start, q["recall"]) for q in outcome.quality if q.get("recall") is not None]
    if estimate:
        ax.plot(
            *zip(*estimate, strict=True),
            ":",
            color="gray",
            label="recall, drift detector (chargebacks so far)",
        )
    pairs = recall_estimates(outcome)
    if pairs:
        ax.plot([t - start for t, _, _ in pairs], [e for _, e, _ in pairs], "^", color="tab:green", ms=4,
                label="recall, estimated from the scores (no labels)")  # fmt: skip
        done = [(t - start, r) for t, _, r in pairs if r is not None]
        if done:
            ax.plot(*zip(*done, strict=True), "v", color="tab:red", ms=4,
                    label="recall, realized once the window's chargebacks matured")  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("quality")
    ax.set_xlabel("seconds since the replay started")
    _markers(ax, outcome, start)
    ax.legend(loc="lower left", fontsize=8, ncol=3)
    return save_figure(fig, path)


def plot_rollout(outcome: Outcome, path: Path) -> Path:
    """Share of traffic per role over time: the canary's percent and the mirrored shadow."""
    plt = pyplot()
    start = outcome.timeline.first("replay-start")["wall"]
    states = [e for e in outcome.timeline.events if e["kind"] == "rollout-state"]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    if states:
        t = [e["wall"] - start for e in states]
        ax.step(t, [e.get("canary_percent") or 0 for e in states], where="post", label="canary %")
        ax.step(
            t,
            [e.get("mirror_percent") or 0 for e in states],
            where="post",
            ls=":",
            label="mirrored to shadow %",
        )
    ax.set_ylim(-5, 105)
    ax.set_ylabel("% of traffic")
    ax.set_xlabel("seconds since the replay started")
    _markers(ax, outcome, start)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    return save_figure(fig, path)
