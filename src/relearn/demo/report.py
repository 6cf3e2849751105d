"""The demo's report: one HTML file with PNG plots, and a summary table for the terminal.

Quality is measured on what the endpoint answered, against the simulated world's ground truth (every
chargeback that will ever arrive): before the drift, during it (the old champion), and after the
promoted retrain (the new champion) — the view a fraud team gets weeks later. The drift detector's own
label-based estimate, which is what triggered the retraining, is plotted beside it. The facts are
:mod:`relearn.demo.report_facts`', the plots :mod:`relearn.demo.report_plots`'; this module writes them out.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from relearn.demo.loop import Outcome
from relearn.demo.report_facts import summary
from relearn.demo.report_plots import MARKERS, plot_drift, plot_quality, plot_rollout, plot_traffic
from relearn.demo.respond import response_lines
from relearn.model.report import CSS


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
    """The training gate's verdict, a rollback's reason, and what a promotion rested on (its evidence)."""
    ev = s.get("promotion_evidence")
    lines = response_lines(s.get("responses", []))
    lines += [f"training gate: {s['gate']}"] if s.get("gate") else []
    lines += [s["experiment"]] if s.get("experiment") else []
    est = s.get("recall_estimate_mae") or {}
    if est.get("windows"):
        lines.append(
            f"label-free recall estimate: mean absolute error {est['mae']:.3f} over {est['windows']} windows "
            f"whose chargebacks matured (estimate - realized {est['bias']:+.3f} on average)"
        )
    lines += [f"rolled back: {s['rollback']}"] if s.get("rollback") else []
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
    from relearn.demo import experiment

    tested = experiment.analysis_for(outcome, out)  # None unless --experiment ran one
    parts.append(experiment.section(tested))
    if tested is not None:
        s["experiment"] = experiment.headline(tested)
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
