"""The demo's report: one HTML file with PNG plots, and a summary table for the terminal.

Quality is measured on what the endpoint answered, against the simulated world's ground truth (every
chargeback that will ever arrive): before the drift, during it (the old champion), and after the
promoted retrain (the new champion) — the view a fraud team gets weeks later. The drift detector's own
label-based estimate, which is what triggered the retraining, is plotted beside it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from relearn.demo.loop import Outcome
from relearn.demo.replay import failed, refused
from relearn.demo.respond import response_lines, responses
from relearn.model.report import CSS, pyplot, save_figure
from relearn.monitoring.quality import at_budget

OLD_ON_AFTER = "  old champion"  # the same requests as "after retrain", scored by the old champion
MARKERS = {  # timeline kind → (label, colour) drawn as vertical lines
    "onset": ("drift onset", "tab:red"),
    "alert": ("alert", "tab:orange"),
    "retrain-start": ("retraining", "tab:purple"),
    "deploy": ("shadow", "tab:gray"),
    "canary-start": ("canary", "tab:blue"),
    "promoted": ("promoted", "tab:green"),
    "rolled-back": ("rolled back", "black"),
}


# ----------------------------------------------------------------------------------------- the facts
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

    These are the values the streaming state served (tests/test_stream_parity.py proves it), recomputed
    from the world's lake, which holds every transaction, scored or not.
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
        "gate": (outcome.timeline.first("retrain-end") or {}).get("gate"),
        "responses": responses(outcome.timeline.events),
        "promotion_evidence": next(
            (e.get("evidence") for e in outcome.audit if e["action"] == "promote"), None
        ),
        "drift_windows": len(drifted),
        "windows": len([w for w in outcome.windows if w["track"] == "stable"]),
        "ports_left_open": outcome.ports_left_open,
        "interrupted": outcome.interrupted,
    }


# --------------------------------------------------------------------------------------------- plots
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


# -------------------------------------------------------------------------------------------- output
def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def terminal_table(s: dict[str, Any]) -> str:
    """The summary as plain text."""
    widths = (16, 10, 8, 18, 15, 9)
    header = ("phase", "requests", "fraud", "precision@budget", "recall@budget", "PR-AUC")

    def line(cells: tuple) -> str:
        return "  " + "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [f"relearn demo — scenario {s['scenario']}", "", line(header)]
    for name, q in s["quality"].items():
        lines.append(
            line((name, f"{q['n']:,}", q["fraud"], _f(q["precision"]), _f(q["recall"]), _f(q["pr_auc"])))
        )
    fed = s.get("feature_feed") or {}
    if fed:
        lines.append(
            f"  features streamed: {s['requests']:,} scored and {fed.get('fed', 0):,} unscored transactions, "
            f"{fed.get('chargebacks_fed', 0):,} chargebacks; each request read its card's state up to itself"
        )
    skew = s.get("feature_skew") or {}
    if skew.get("rows") is not None:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in skew["skewed"].items()) or "none"
        lines.append(
            f"  training/serving skew: {skew['rows']:,} served vectors checked, skewed features: {shares}"
        )
    lines.append("")
    for kind, m in s["milestones"].items():
        if kind in MARKERS or kind in ("retrain-end", "replay-end"):
            lines.append(f"  {kind:<16}{m['t_seconds']:>8.1f} s   stream time {_minute(m.get('sim'))}")
    lines += ["", *(f"  {line}" for line in evidence_lines(s))]
    lines.append("")
    lines.append(
        f"  requests {s['requests']:,}, failed {s['failed']}{_refused(s)}; "
        f"champion v{s['champion_before']} → v{s['champion_after']}; "
        f"drift windows {s['drift_windows']}/{s['windows']}"
    )
    return "\n".join(lines)


def _refused(s: dict[str, Any]) -> str:
    """The summary's note on requests the data contract refused (a scenario sent records that break it)."""
    return f", refused {s['refused']:,} by the data contract" if s.get("refused") else ""


def evidence_lines(s: dict[str, Any]) -> list[str]:
    """The training gate's verdict and what the promotion rested on (source, labels, effect, interval)."""
    ev = s.get("promotion_evidence")
    lines = response_lines(s.get("responses", []))
    lines += [f"training gate: {s['gate']}"] if s.get("gate") else []
    return lines + ([f"promotion evidence: {ev['source']} {ev['verdict']}: {ev['detail']}"] if ev else [])


def _minute(sim: str | None) -> str:
    return (sim or "")[:16].replace("T", " ")


def _row(*cells: Any, tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def write(outcome: Outcome) -> tuple[Path, dict[str, Any]]:
    """Write ``report.html`` (plots embedded) and ``summary.json`` into the report folder."""
    out = outcome.settings.report_dir()
    out.mkdir(parents=True, exist_ok=True)
    s = summary(outcome)
    plots = {
        "Traffic and latency": plot_traffic(outcome, out / "traffic.png"),
        "Drift p-values per feature (stable traffic)": plot_drift(outcome, out / "drift.png"),
        "Model quality": plot_quality(outcome, out / "quality.png"),
        "Rollout": plot_rollout(outcome, out / "rollout.png"),
    }
    parts = [
        "<h1>relearn — the loop on one machine</h1>",
        f"<p class='sub'>scenario <b>{html.escape(s['scenario'])}</b>, {s['requests']:,} requests over gRPC, "
        f"{s['failed']} failed{_refused(s)}; champion v{s['champion_before']} → v{s['champion_after']}</p>",
        "<h2>Model quality</h2><table>",
        _row("phase", "requests", "fraud", "precision at budget", "recall at budget", "PR-AUC", tag="th"),
    ]
    for name, q in s["quality"].items():
        parts.append(
            _row(name, f"{q['n']:,}", q["fraud"], _f(q["precision"]), _f(q["recall"]), _f(q["pr_auc"]))
        )
    parts += ["</table><h2>Evidence</h2>", *(f"<p>{html.escape(line)}</p>" for line in evidence_lines(s))]
    parts += ["<h2>Timeline</h2><table>", _row("event", "seconds", "stream time", tag="th")]
    parts += [_row(kind, m["t_seconds"], _minute(m.get("sim"))) for kind, m in s["milestones"].items()]
    parts.append("</table>")
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        )
    parts += [
        "<h2>Rollout decisions (audit trail)</h2><table>",
        _row("time", "action", "version", "reason", tag="th"),
    ]
    for e in outcome.audit:
        parts.append(
            _row(
                str(e.get("time", ""))[11:19], e.get("action", ""), e.get("version", ""), e.get("reason", "")
            )
        )
    parts.append("</table>")
    from relearn.demo.experiment import report_section

    parts.append(report_section(outcome, out))  # empty unless --experiment ran one
    page = out / "report.html"
    page.write_text(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>relearn demo</title>"
        f"<style>{CSS}</style></head><body>\n{''.join(parts)}\n</body></html>\n",
        encoding="utf-8",
    )
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
    events = {"timeline": outcome.timeline.events, "audit": outcome.audit, "windows": outcome.windows}
    (out / "events.json").write_text(json.dumps(events, indent=1, default=str))
    return page, s
