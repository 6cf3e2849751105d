"""The recalibration pipeline (the cluster's response to a prior shift) end to end under kfp.local.

A real drift detector (its own environment) serves an inference log of prior-shifted traffic; the
pipeline's recalibrate step reads the labelled rows back over the detector's HTTP API, as in a cluster,
registers the champion with a re-fitted threshold in a real MLflow registry, and the deploy step starts
that version as a shadow through the rollout backend (the local router's state here, the
InferenceService/VirtualService in a cluster: the same code path as a retrained model's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from kfp import local

from pipelines.recalibrate import recalibrate_pipeline
from relearn.events import REQUEST_TYPE
from relearn.features.spec import MODEL_INPUTS
from relearn.model.registry import CHALLENGER, CHAMPION, get_alias_version, get_version_tags
from relearn.model.train import TrainParams, time_split, train
from relearn.monitoring.store import connect
from relearn.rollout.local_backend import LocalBackend
from support.champion import prior_shift as _prior_shift
from support.champion import register_champion as _champion
from support.frames import synthetic_frame
from support.rollout_stack import detector_over

SERVED_AT = time.time() - 3600  # within the log's retention (older rows are compacted away)


def _write_log(db: Path, traffic: pd.DataFrame) -> None:
    """The detector's log as the payload logger fills it: request bodies, predictions and chargebacks."""
    ids = [f"tx-{i}" for i in range(len(traffic))]
    conn = connect(db)
    with conn:
        for tx, row in zip(ids, traffic[list(MODEL_INPUTS)].to_dict("records"), strict=True):
            body = json.dumps({"instances": [{**row, "transaction_id": tx}]}).encode()
            conn.execute(
                "INSERT INTO events (ce_id, type, track, time, received, body) VALUES (?, ?, ?, '', ?, ?)",
                (f"ce-{tx}", REQUEST_TYPE, "stable", SERVED_AT, body),
            )
        conn.executemany(
            "INSERT INTO predictions VALUES (?, 'stable', ?, ?, '1')",
            [(tx, SERVED_AT, 0.0) for tx in ids],
        )
        frauds = [tx for tx, fraud in zip(ids, traffic["label"], strict=True) if fraud]
        conn.executemany(
            "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
            [(tx, 1, SERVED_AT + 60, SERVED_AT + 60) for tx in frauds],
        )
    conn.close()


@pytest.mark.slow
def test_the_pipeline_registers_the_refitted_champion_and_starts_it_as_a_shadow(tmp_path, monkeypatch):
    frame = synthetic_frame(10_000, seed=3)
    train_df, val_df, rest = time_split(frame, val_fraction=0.2, test_fraction=0.3)
    result = train(train_df, val_df, TrainParams(seed=3, epochs=2, progress=False))
    home = tmp_path / "home"
    settings = _champion(result, train_df, home)  # v1, the champion, with a stale threshold
    data = tmp_path / "detector"
    data.mkdir()
    _write_log(data / "inference-log.sqlite3", _prior_shift(rest))
    state = tmp_path / "rollout" / "state.json"
    backend = LocalBackend(state)
    for version in ("1", "2"):  # the local router's endpoints; in a cluster KServe serves each version
        backend.register(version, rest="http://127.0.0.1:9", grpc="127.0.0.1:9")
    env = {"RELEARN_HOME": str(home), "RELEARN_ROLLOUT_BACKEND": "local", "RELEARN_ROLLOUT_STATE": str(state)}
    env["RELEARN_ROLLOUT_AUDIT_LOG"] = str(tmp_path / "rollout" / "audit.jsonl")
    for name, value in env.items():  # kfp.local's task subprocesses inherit them
        monkeypatch.setenv(name, value)

    with detector_over(data) as url:  # a real detector process serving that log
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
        task = recalibrate_pipeline(detector_url=url, alert_budget=0.01, rollout_mode="shadow")

    assert task.output.startswith("gate passed: shadow mirroring 100%"), task.output
    assert get_version_tags(settings, 2)["recalibrated_from"] == "1"
    assert get_alias_version(settings, CHALLENGER) == "2" and get_alias_version(settings, CHAMPION) == "1"
    assert (backend.state().stable, backend.state().shadow) == ("1", "2")
    # Re-fitted, not the champion's stale 0.2 (the flagged share at the budget:
    # tests/model/test_recalibrate.py).
    assert float(get_version_tags(settings, 2)["threshold"]) != pytest.approx(0.2)
