"""The evaluation report: PNG plots and one self-contained HTML page (images embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from relearn.model.evaluate import HEADLINE_METRICS, LOWER_IS_BETTER, alert_count

Curves = Mapping[str, tuple[Sequence[float], Sequence[int]]]  # model name -> (scores, labels)


def pyplot() -> Any:
    """Pyplot on the Agg backend, chosen here so that importing this module has no side effects."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: Curves, path: str | Path, alert_budget: float | None = None) -> Path:
    """Precision-recall curves of several models (e.g. candidate, baseline, champion) on the same rows."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (scores, labels) in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        ax.plot(recall, precision, label=f"{name} (PR-AUC {ap:.3f})", linewidth=1.6)
        if alert_budget is not None:
            k = alert_count(len(scores), alert_budget)  # the operating point
            top = np.argsort(-np.asarray(scores), kind="stable")[:k]
            labels_arr = np.asarray(labels)
            ax.scatter([labels_arr[top].sum() / max(labels_arr.sum(), 1)], [labels_arr[top].mean()], s=25)
    if curves:
        rate = float(np.mean(next(iter(curves.values()))[1]))
        ax.axhline(rate, color="grey", linestyle=":", linewidth=1, label=f"positive rate {rate:.3%}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_calibration(models: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Reliability diagram from the ``calibration`` entries of evaluation metrics, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for name, metrics in models.items():
        calib = metrics["calibration"]
        points = [
            (p, f)
            for p, f in zip(calib["mean_predicted"], calib["fraction_positive"], strict=True)
            if p is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{name} (ECE {calib['ece']:.4f})")
    ax.set(xlabel="mean predicted probability", ylabel="fraction fraudulent", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Calibration (reliability diagram)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_slices(models: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Recall at the alert budget per slice, one bar per model, so a slice regression stands out."""
    plt = pyplot()
    first = next(iter(models.values()))
    rows = [(g, v) for g, values in first["slices"].items() for v in values]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.5))
    height = 0.8 / max(len(models), 1)
    for i, (name, metrics) in enumerate(models.items()):
        recalls = [metrics["slices"].get(g, {}).get(v, {}).get("recall_at_budget") for g, v in rows]
        ys = np.arange(len(rows)) + i * height
        ax.barh(ys, [r if r is not None else 0.0 for r in recalls], height=height, label=name)
    ax.set_yticks(np.arange(len(rows)) + 0.4 - height / 2, [f"{g}={v}" for g, v in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="recall at alert budget", xlim=(0, 1), title="Slices")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a figure as PNG (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def make_plots(
    out_dir: str | Path,
    curves: Curves,
    metrics_by_model: Mapping[str, Mapping[str, Any]],
    alert_budget: float | None = None,
) -> dict[str, Path]:
    """All report plots under ``out_dir``; returns name -> PNG path (what :func:`write_report` takes)."""
    out_dir = Path(out_dir)
    return {
        "Precision-recall": plot_pr_curves(curves, out_dir / "pr_curves.png", alert_budget),
        "Calibration": plot_calibration(metrics_by_model, out_dir / "calibration.png"),
        "Slices": plot_slices(metrics_by_model, out_dir / "slices.png"),
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _delta_cell(delta: float | None, lower_is_better: bool) -> str:
    if delta is None:
        return "<td>–</td>"
    good = delta < 0 if lower_is_better else delta > 0
    css = "good" if good else ("bad" if delta != 0 else "")
    return f'<td class="{css}">{delta:+.4f}</td>'


def _paired_table(paired: Mapping[str, Any], confidence: float) -> list[str]:
    """Candidate minus champion on the same rows, each difference with its bounds."""
    from relearn.model.stats import summary

    rows = [
        f"<h2>Candidate vs champion, paired</h2><p class='sub'>{paired['n']:,} holdout rows "
        f"({paired['positives']:,} fraud) scored by both models, {paired['n_boot']:,} paired bootstrap "
        f"resamples; the difference is above the lower bound (below the upper) with {100 * confidence:g} % "
        f"confidence: together a {200 * confidence - 100:g} % interval</p>",
        "<table><tr><th>metric</th><th>candidate</th><th>champion</th><th>Δ</th>"
        "<th>lower bound</th><th>upper bound</th></tr>",
    ]
    for name, row in summary(dict(paired), confidence).items():
        rows.append(
            f"<tr><td>{name}</td><td>{_fmt(row['candidate'])}</td><td>{_fmt(row['champion'])}</td>"
            f"{_delta_cell(row['difference'], False)}{_delta_cell(row['lower'], False)}"
            f"{_delta_cell(row['upper'], False)}</tr>"
        )
    rows.append("</table>")
    return rows


def _behavioral_section(results: Mapping[str, Any]) -> list[str]:
    """Each behavioral test's failure rate, then its failing cases: what changed and how the score moved."""
    rows = [
        f"<h2>Behavioral tests</h2><p class='sub'>{html.escape(str(results['suite']))}: cases drawn from "
        f"{results['represented']:,} of {results['rows']:,} holdout rows (seed {results['seed']}), perturbed "
        f"and re-featurized with the serving feature code; threshold {_fmt(results['threshold'])}</p>",
        "<table><tr><th>test</th><th>kind</th><th>expect</th><th>cases</th><th>failures</th>"
        "<th>failure rate</th><th>max</th></tr>",
    ]
    failing = []
    for name, test in results["tests"].items():
        limit = test["max_failure_rate"]
        rate = test["failure_rate"]
        css = "bad" if rate is not None and limit is not None and rate > limit else ""
        rows.append(
            f"<tr><td title='{html.escape(test['about'])}'>{html.escape(name)}</td><td>{test['kind']}</td>"
            f"<td>{test['expect']}</td><td>{test['cases']:,}</td><td>{test['failures']:,}</td>"
            f"<td class='{css}'>{'–' if rate is None else f'{rate:.1%}'}</td>"
            f"<td>{'gate default' if limit is None else f'{limit:.0%}'}</td></tr>"
        )
        failing += [(name, case) for case in test["failing"]]
    rows.append("</table>")
    if failing:
        rows.append(
            "<h3>Failing cases (first five per test)</h3><table><tr><th>test</th><th>transaction</th>"
        )
        rows.append("<th>score</th><th>perturbed</th><th>changed</th><th>model inputs that moved</th></tr>")
        for name, case in failing:
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(case['transaction_id'])}</td>"
                f"<td>{case['score']:.4f}</td><td>{case['perturbed_score']:.4f}</td>"
                f"<td style='text-align:left'>{html.escape(case['changed'])}</td>"
                f"<td style='text-align:left'>{html.escape(case['inputs'])}</td></tr>"
            )
        rows.append("</table>")
    return rows


CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6rem 1rem;min-width:130px}
.card .v{font-size:1.5rem;font-weight:600} .card .k{color:#666;font-size:.8rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border-bottom:1px solid #eee;padding:.25rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.good{color:#137333} .bad{color:#b3261e}
.gate{padding:.8rem 1rem;border-radius:8px;margin:1rem 0;font-weight:600}
.pass{background:#e6f4ea;color:#137333} .fail{background:#fce8e6;color:#b3261e}
img{max-width:100%;border:1px solid #eee;border-radius:6px;margin:.5rem 0}
"""


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    comparison: Mapping[str, Any],
    plots: Mapping[str, str | Path],
    gate: Any | None = None,
    title: str = "relearn fraud model evaluation",
    paired: Mapping[str, Any] | None = None,
    confidence: float = 0.975,
    behavioral: Mapping[str, Any] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write ``report.html`` into ``out_dir``: gate verdict, headline cards, comparison, plots, slices.

    Args:
        out_dir: Directory of the report.
        metrics: The candidate's evaluation metrics.
        comparison: The output of :func:`relearn.model.evaluate.compare`.
        plots: Title -> PNG path; embedded as base64 so the file stands alone (e.g. as an MLflow artifact).
        gate: A :class:`relearn.model.gate.GateDecision` (or anything with ``passed`` and ``reason``).
        title: Page title.
        paired: The paired bootstrap against the champion (:func:`relearn.model.evaluate.paired`): each
            difference is shown with its one-sided bounds at ``confidence``.
        confidence: Confidence of those bounds (the gate's).
        behavioral: Results of :func:`relearn.model.behavioral.run_suite`: each test's failure rate and
            its failing cases.
        sections: More HTML sections, after the behavioral one (e.g. fairness by group).

    Returns:
        The path of the HTML file.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(
        f'<p class="sub">{metrics.get("n", 0):,} transactions, {metrics.get("positives", 0):,} labelled '
        f"fraud ({_fmt(metrics.get('positive_rate'))}); alert budget {_fmt(metrics.get('alert_budget'))} "
        f"→ threshold {_fmt(metrics.get('threshold'))}; generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
    )
    if gate is not None:
        css, verdict = ("pass", "PASSED") if gate.passed else ("fail", "FAILED")
        parts.append(f'<div class="gate {css}">Gate {verdict}: {html.escape(gate.reason)}</div>')

    parts.append('<div class="cards">')
    for name in HEADLINE_METRICS:
        parts.append(
            f'<div class="card"><div class="v">{_fmt(metrics.get(name), 3)}</div>'
            f'<div class="k">{name}</div></div>'
        )
    parts.append("</div>")

    rows = comparison.get("metrics", {})
    parts.append("<h2>Comparison</h2><table><tr><th>metric</th><th>candidate</th><th>baseline</th>")
    parts.append("<th>Δ baseline</th><th>champion</th><th>Δ champion</th></tr>")
    for name, row in rows.items():
        lower = name in LOWER_IS_BETTER
        parts.append(
            f"<tr><td>{name}</td><td>{_fmt(row['candidate'])}</td><td>{_fmt(row['baseline'])}</td>"
            f"{_delta_cell(row['delta_vs_baseline'], lower)}<td>{_fmt(row['champion'])}</td>"
            f"{_delta_cell(row['delta_vs_champion'], lower)}</tr>"
        )
    parts.append("</table>")
    if paired is not None:
        parts.extend(_paired_table(paired, confidence))
    if behavioral is not None:
        parts.extend(_behavioral_section(behavioral))
    parts.extend(sections)

    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        )

    reference = comparison.get("slice_reference", "reference")
    parts.append(f"<h2>Slices</h2><p class='sub'>recall at the global alert threshold; Δ vs {reference}</p>")
    parts.append("<table><tr><th>slice</th><th>n</th><th>fraud</th><th>PR-AUC</th><th>recall</th>")
    parts.append(f"<th>{reference} recall</th><th>Δ recall</th></tr>")
    for group, values in comparison.get("slices", {}).items():
        for value, row in values.items():
            parts.append(
                f"<tr><td>{html.escape(group)}={html.escape(value)}</td><td>{row['n']:,}</td>"
                f"<td>{row['positives']:,}</td><td>{_fmt(row['candidate_pr_auc'])}</td>"
                f"<td>{_fmt(row['candidate_recall'])}</td><td>{_fmt(row['reference_recall'])}</td>"
                f"{_delta_cell(row['delta_recall'], False)}</tr>"
            )
    parts.append("</table>")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    body = "\n".join(parts)
    path.write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return path
