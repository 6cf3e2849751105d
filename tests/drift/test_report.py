"""The per-window HTML report: the drifted inputs with embedded reference-vs-current plots, or no drift."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from conftest import WINDOW, scenario_stream
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.detector import DriftTester
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor, Window
from relearn.monitoring.settings import NON_STATIONARY_INPUTS, DriftSettings

PNG = b"\x89PNG\r\n\x1a\n"


def _close(monitor: Monitor, frame: pd.DataFrame, index: int) -> tuple[dict, str]:
    """Close one window of ``frame`` through the monitor (as the thread does) and read its report."""
    window = Window(
        rows=frame[list(MODEL_INPUTS)].to_dict("records"), scores=frame["score"].tolist(), index=index
    )
    monitor._close("stable", window)
    path = monitor.settings.data_dir / "reports" / "stable" / f"window-{index:06d}.html"
    return monitor.results["stable"][-1], path.read_text(encoding="utf-8")


def test_drifted_window_report_names_the_feature_with_an_embedded_plot_and_clean_window_says_no_drift(
    tmp_path,
):
    reference, before, after = scenario_stream("covariate_shift")
    monitor = Monitor(DriftSettings(data_dir=tmp_path, reports=True), Metrics(), Alerter(3600, None))
    monitor.tester = DriftTester(reference[[*MODEL_INPUTS, "score"]], exclude=list(NON_STATIONARY_INPUTS))
    try:
        clean, clean_html = _close(monitor, before.iloc[:WINDOW], 0)
        drifted, drifted_html = _close(monitor, after.iloc[WINDOW : 2 * WINDOW], 1)
    finally:
        monitor.conn.close()
    assert not clean["drift"] and ": no drift</h1>" in clean_html and "data:image/png" not in clean_html
    assert drifted["drift"] and drifted["drifted"], drifted
    assert ": drift</h1>" in drifted_html
    for name in drifted["drifted"]:
        marker = f'<img alt="{name}" src="data:image/png;base64,'
        assert marker in drifted_html, name
        payload = drifted_html.split(marker, 1)[1].split('"', 1)[0]
        assert base64.b64decode(payload).startswith(PNG)  # a real PNG, embedded (no external file)
        assert f"<td>{name}</td>" in drifted_html and "DRIFT" in drifted_html
    assert np.isfinite(drifted["p_values"][drifted["drifted"][0]])
