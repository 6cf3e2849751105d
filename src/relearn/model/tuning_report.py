"""A tuning study's report (:mod:`relearn.model.tuning`): ``tuning.md`` and Optuna's plots, as files.

The page says whether tuning beat the default hyper-parameters (trial 0) and lists every trial with its
state, validation PR-AUC and epochs; the parameter importances and parallel coordinates are PNGs beside it
(left out, with the reason, when the study is too small for them).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any


def write_report(study: Any, best: dict[str, Any], default_value: float, out: Path) -> list[Path]:
    """``tuning.md`` (best vs defaults, every trial) and the importance / parallel-coordinates plots."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    for name, plot in (
        ("param_importances", plots.plot_param_importances),
        ("parallel_coordinate", plots.plot_parallel_coordinate),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
            path = out / f"{name}.png"
            axes.figure.set_size_inches(9, 5)
            axes.figure.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(axes.figure)
            written.append(path)
        except (ValueError, RuntimeError) as exc:  # e.g. fewer than two complete trials
            notes.append(f"- no {name} plot: {exc}")
    beat = "n/a (defaults outside the space)"
    if not math.isnan(default_value):
        beat = "yes" if study.best_value > default_value else "no: the defaults were the best trial"
    lines = [
        "# relearn tuning study",
        "",
        f"- best validation PR-AUC: {study.best_value:.4f} (trial {study.best_trial.number})",
        f"- default hyper-parameters (trial 0): {default_value:.4f}",
        f"- tuning beat the defaults: {beat}",
        f"- best params: {best}",
        *notes,
        "",
        "| trial | state | val PR-AUC | epochs | params |",
        "|---|---|---|---|---|",
    ]
    for trial in study.trials:
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        epochs = len(trial.intermediate_values)
        lines.append(f"| {trial.number} | {trial.state.name.lower()} | {value} | {epochs} | {trial.params} |")
    lines += ["", *(f"![{p.stem}]({p.name})" for p in written)]
    report = out / "tuning.md"
    report.write_text("\n".join(lines) + "\n")
    return [report, *written]
