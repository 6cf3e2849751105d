"""The drift report puts the drifted features the model relies on most first (issue 20)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from relearn.monitoring.detector import WindowResult
from relearn.monitoring.report import IMPORTANCE_ATTR, write_report

DRIFTED = ["merchant_chargeback_rate_30d", "log_amount", "user_txn_count_1h"]
P_VALUES = {
    "merchant_chargeback_rate_30d": 1e-9,
    "log_amount": 1e-4,
    "user_txn_count_1h": 1e-6,
    "channel": 0.4,
}
IMPORTANCE = {"log_amount": 0.21, "user_txn_count_1h": 0.08, "merchant_chargeback_rate_30d": 0.0}


def _frames(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=200) for name in DRIFTED}
    reference = pd.DataFrame({**columns, "channel": rng.choice(["pos", "ecommerce"], 200)})
    window = reference.assign(**{name: reference[name] + 3 for name in DRIFTED})
    return reference, window


def _order(text: str) -> tuple[list[str], list[str]]:
    table = re.findall(r"<tr><td>([^<]+)</td>", text)
    plots = re.findall(r'<img alt="([^"]+)"', text)
    return table, plots


def test_drifted_features_are_ranked_by_the_importance_the_reference_carries(tmp_path):
    result = WindowResult(P_VALUES, list(DRIFTED), True, False, 0.01, 200)
    reference, window = _frames(0)
    reference.attrs[IMPORTANCE_ATTR] = IMPORTANCE
    reference.to_parquet(tmp_path / "reference.parquet")  # as the detector gets it: attrs survive parquet
    loaded = pd.read_parquet(tmp_path / "reference.parquet")
    text = write_report(tmp_path / "r.html", "stable", 1, result, loaded, window).read_text()
    table, plots = _order(text)
    assert plots == ["log_amount", "user_txn_count_1h", "merchant_chargeback_rate_30d"]
    assert table == [*plots, "channel"]
    assert "<td>0.21</td>" in text and "by importance to the model" in text

    # Without importance the order is the p-values' (most significant first), as before.
    plain = write_report(tmp_path / "p.html", "stable", 1, result, reference.assign(), window, importance={})
    table, plots = _order(plain.read_text())
    assert plots == ["merchant_chargeback_rate_30d", "user_txn_count_1h", "log_amount"]
    assert "by p-value" in plain.read_text()
