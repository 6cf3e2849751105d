"""Backtest evidence: the canary's and the stable model scored on the same labelled traffic of the log.

Real parts: the drift detector's SQLite schema (:func:`relearn.monitoring.store.connect`) holding served
requests (v1 bodies with the model inputs, as the predictor logs them), the detector's predictions and
chargebacks; an MLflow registry on SQLite with tiny real networks (``tests/support/rollout_stack.py``): v2
ranks as v1 does, v4 reverses v1's ranking. Each check runs twice: on the log file (local mode) and through a
real drift detector's ``GET /v1/backtest/labels|inputs`` over the same log (a cluster, where the controller
cannot open the detector's volume), so both paths must give the same evidence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relearn.events import REQUEST_TYPE
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.model.net import load_model, score
from relearn.monitoring.store import connect
from relearn.rollout.analysis import AnalysisSettings, Verdict
from relearn.rollout.backtest import Backtest, DetectorRows, LogFile
from support.rollout_stack import CATEGORIES, detector_over, make_artifacts


@pytest.fixture(params=["file", "detector"])
def rows(request, tmp_path: Path) -> Iterator[tuple[Path, LogFile | DetectorRows]]:
    """The inference log's path, and how the backtest reads it: the file, or a detector serving it."""
    db = tmp_path / "inference-log.sqlite3"
    if request.param == "file":
        yield db, LogFile(db)
        return
    connect(db).close()
    with detector_over(tmp_path) as url:
        yield db, DetectorRows(url)


@pytest.fixture
def models(settings, tmp_path: Path) -> dict[str, Path]:
    """Versions 1, 2 and 4 of the model in a tmp MLflow registry (sources: the tiny artifacts)."""
    from mlflow import MlflowClient

    artifacts = make_artifacts(tmp_path / "artifacts")
    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(settings.model_name)
    for version in ("1", "2", "3", "4"):
        assert client.create_model_version(
            settings.model_name, source=str(artifacts[version])
        ).version == int(version)
    return artifacts


def serve(db: Path, artifact: Path, n: int, *, when: float, seed: int = 0, labelled: bool = True) -> None:
    """``n`` stable requests served at ``when`` (scored by ``artifact``); its top 5 % are charged back."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(0, 3, size=(n, len(NUMERIC_INPUTS))), columns=list(NUMERIC_INPUTS))
    frame = frame.assign(**dict(zip(CATEGORICAL_INPUTS, CATEGORIES, strict=True)))
    net, pre, _ = load_model(artifact)
    scores = score(net, pre, frame)
    fraud = scores >= np.quantile(scores, 0.95)
    ids = [f"tx-{seed}-{i}" for i in range(n)]
    conn = connect(db)
    with conn:
        for i, row in enumerate(frame[list(MODEL_INPUTS)].to_dict("records")):
            body = json.dumps({"instances": [{**row, "transaction_id": ids[i]}]}).encode()
            conn.execute(
                "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, ?, ?, '', ?, ?)",
                (f"ce-{ids[i]}", REQUEST_TYPE, "stable", when, body),
            )
        conn.executemany(
            "INSERT INTO predictions VALUES (?, 'stable', ?, ?, '1')",
            zip(ids, [when] * n, scores, strict=True),
        )
        if labelled:
            rows = [(t, 1, when + 60, when + 60) for t, f in zip(ids, fraud, strict=True) if f]
            conn.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)", rows)
    conn.close()


def test_backtest_passes_refutes_and_waits(models, settings, rows) -> None:
    db, source = rows
    cfg = AnalysisSettings(backtest_min_rows=500, backtest_min_positives=20)
    backtest = Backtest(source, cfg, settings)
    serve(db, models["1"], 3000, when=time.time() - 86400, seed=1)  # before the versions were registered
    serve(db, models["1"], 400, when=time.time() + 1, seed=2)

    early = backtest("1", "2")
    assert early.verdict is Verdict.UNKNOWN and early.n == 400, "older traffic may be in its training window"
    assert "400 labelled predictions (20 fraud) served since v2's training began; 500 (20 fraud) needed" in (
        early.detail
    )

    serve(db, models["1"], 400, when=time.time() + 2, seed=3)
    same = backtest("1", "2")  # v2 ranks every row as v1 does: no difference, within any margin
    assert same.verdict is Verdict.PASSED, same.detail
    assert (same.n, same.positives, same.effect, same.lower, same.upper) == (800, 40, 0.0, 0.0, 0.0)
    assert same.source == "backtest" and same.metric == "recall_at_budget" and same.confidence == 0.975
    worse = backtest("1", "4")  # v4 reverses the ranking: it reviews none of the frauds
    assert worse.verdict is Verdict.FAILED and worse.upper < cfg.backtest_min_effect, worse.detail
    assert "recall_at_budget gain -0.2000 is not significant" in worse.detail  # 8 reviewed, all frauds

    broken = backtest("1", "3")  # v3's embeddings cannot take the vocabulary: no evidence, no crash
    assert broken.verdict is Verdict.UNKNOWN and broken.detail.startswith("failed: ")


def test_unmatured_labels_are_no_evidence(models, settings, rows) -> None:
    db, source = rows
    serve(db, models["1"], 1000, when=time.time() + 1)
    matured = Backtest(source, AnalysisSettings(), settings)("1", "2")
    assert matured.verdict is Verdict.PASSED
    waiting = AnalysisSettings(backtest_label_maturity_seconds=3600)
    fresh = Backtest(source, waiting, settings)("1", "2")
    assert fresh.verdict is Verdict.UNKNOWN and fresh.n == 0
