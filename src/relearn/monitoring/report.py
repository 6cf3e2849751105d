"""HTML drift report of one window: p-values, and reference-vs-current plots of the drifted features.

The drifted features come first, the most important to the model first, so an analyst reads first the drift
that matters: importance is the recall at the alert budget the model loses when the feature is shuffled
(:func:`relearn.model.explain.permutation_importance`), given to :func:`write_report` or carried by the
reference sample (``reference.attrs[IMPORTANCE_ATTR]``: parquet keeps a frame's attrs).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from relearn.features.spec import CATEGORICAL_INPUTS
from relearn.monitoring.detector import WindowResult

IMPORTANCE_ATTR = "feature_importance"  # {input: recall at budget lost when shuffled}


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


def ranked(result: WindowResult, importance: Mapping[str, float] | None) -> list[str]:
    """Every tested feature: the drifted ones by importance (unknown last), then the rest by p-value."""
    weight = importance or {}

    def key(name: str) -> tuple[int, float, float]:
        if name in result.drifted:
            return (0, -weight.get(name, float("-inf")), result.p_values[name])
        return (1, 0.0, result.p_values[name])

    return sorted(result.p_values, key=key)


def write_report(
    path: Path,
    track: str,
    index: int,
    result: WindowResult,
    reference: pd.DataFrame,
    window: pd.DataFrame,
    importance: Mapping[str, float] | None = None,
) -> Path:
    """Write the window's report (embedded PNGs, no external files) and return its path.

    ``importance`` (default: the reference's ``attrs[IMPORTANCE_ATTR]``, if any) orders the drifted features.
    """
    if importance is None:
        importance = reference.attrs.get(IMPORTANCE_ATTR)
    order = ranked(result, importance)
    order += [name for name in result.drifted if name not in result.p_values]

    def weight(name: str) -> str:
        return f"{importance[name]:.3g}" if importance and name in importance else ""

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{result.p_values[name]:.3g}</td>"
        f"<td>{'DRIFT' if name in result.drifted else ''}</td><td>{weight(name)}</td></tr>"
        for name in order
    )
    plots = "".join(
        f'<img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{_plot(name, reference[name], window[name])}">'
        for name in order
        if name in result.drifted and name in reference.columns and name in window.columns
    )
    verdict = "drift" if result.is_drift else "no drift"
    basis = "by importance to the model (recall at budget lost when shuffled)" if importance else "by p-value"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>relearn drift {track} #{index}</title>"
        f"</head><body><h1>Window {index} ({html.escape(track)}): {verdict}</h1>"
        f"<p>{result.size} events; corrected threshold {result.threshold:.3g}. Drifted features first, "
        f"{basis}.</p><table><tr><th>feature</th><th>p-value</th><th></th><th>importance</th></tr>{rows}"
        f"</table>{plots}</body></html>",
        encoding="utf-8",
    )
    return path
