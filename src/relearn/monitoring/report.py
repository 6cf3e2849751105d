"""HTML drift report of one window: p-values, and reference-vs-current plots of the drifted features."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from relearn.features.spec import CATEGORICAL_INPUTS
from relearn.monitoring.detector import WindowResult


def _plot(name: str, reference: pd.Series, current: pd.Series) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if name in CATEGORICAL_INPUTS:
        shares = pd.DataFrame(
            {
                "reference": reference.astype(str).replace("", "(missing)").value_counts(normalize=True),
                "current": current.astype(str).replace("", "(missing)").value_counts(normalize=True),
            }
        ).fillna(0.0)
        shares.plot.bar(ax=ax)
    else:
        ax.hist(reference.astype(float), bins=40, alpha=0.5, density=True, label="reference")
        ax.hist(current.astype(float), bins=40, alpha=0.5, density=True, label="current")
        ax.legend()
    ax.set_title(name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(
    path: Path, track: str, index: int, result: WindowResult, reference: pd.DataFrame, window: pd.DataFrame
) -> Path:
    """Write the window's report (embedded PNGs, no external files) and return its path."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{p:.3g}</td>"
        f"<td>{'DRIFT' if name in result.drifted else ''}</td></tr>"
        for name, p in sorted(result.p_values.items(), key=lambda item: item[1])
    )
    plots = "".join(
        f'<img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{_plot(name, reference[name], window[name])}">'
        for name in result.drifted
        if name in reference.columns and name in window.columns
    )
    verdict = "drift" if result.is_drift else "no drift"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>relearn drift {track} #{index}</title>"
        f"</head><body><h1>Window {index} ({html.escape(track)}): {verdict}</h1>"
        f"<p>{result.size} events; corrected threshold {result.threshold:.3g}.</p>"
        f"<table><tr><th>feature</th><th>p-value</th><th></th></tr>{rows}</table>{plots}</body></html>",
        encoding="utf-8",
    )
    return path
