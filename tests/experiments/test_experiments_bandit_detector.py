"""The bandit's update in the cluster: the chart's CronJob runs ``update-bandit --detector URL``, which reads
the joined reward history from a real drift detector process (``GET /v1/experiments/rewards`` over its
inference log, the real schema) instead of a local file, and writes the new shares to the store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from test_experiments_bandit_live import DAY, T0, history

from relearn.experiments.bandit_live import detector_history, update
from relearn.experiments.cli import main
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore
from relearn.features.spec import LABEL
from relearn.monitoring import served
from relearn.monitoring.store import connect
from support.rollout_stack import DRIFT_PYTHON, detector_over

pytestmark = pytest.mark.skipif(not DRIFT_PYTHON.exists(), reason="the detector's venv: make setup")


@pytest.fixture
def detector(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A drift detector process on loopback over an inference log in ``tmp_path``: (log, url)."""
    db = tmp_path / "inference-log.sqlite3"
    connect(db).close()
    with detector_over(tmp_path) as url:
        yield db, url


def log_history(db: Path, h: pd.DataFrame) -> None:
    """What the detector holds after serving ``h``: predictions by model version, chargebacks joined."""
    ids = [f"tx-{i}" for i in range(len(h))]
    versions = h["arm"].str.removeprefix("v")  # the predictor logs its model version, "9" for arm v9
    conn = connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO predictions VALUES (?, 'stable', ?, ?, ?)",
            zip(ids, h["time"], h["score"], versions, strict=True),
        )
        # Not rewards: a shadow's mirrored copy and a prediction with no version (no arm to credit).
        conn.execute("INSERT INTO predictions VALUES ('tx-0', 'shadow', ?, 0.99, '9')", (h["time"].iloc[0],))
        conn.execute("INSERT INTO predictions VALUES ('tx-x', 'stable', ?, 0.99, NULL)", (h["time"].iloc[0],))
        frauds = [
            (t, 1, when + DAY, time.time()) for t, when, y in zip(ids, h["time"], h[LABEL], strict=True) if y
        ]
        conn.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)", frauds)
    conn.close()


def test_update_bandit_reads_the_rewards_from_the_detector(detector, tmp_path, monkeypatch, capsys):
    db, url = detector
    monkeypatch.setenv("RELEARN_EXPERIMENT_ALERT_BUDGET", "0.15")
    store = tmp_path / "s.json"
    opts = ["--no-registry", "--store", str(store), "--audit-log", str(tmp_path / "audit.jsonl")]
    argv = ["start", "b1", "--mode", "bandit", "--arm", "v7", "--arm", "v8", "--arm", "v9", "--control", "v7"]
    assert main([*opts, *argv]) == 0
    started = ExperimentStore(store).get("b1")["started"]
    h = history(seed=1)
    h = h.assign(time=h["time"] - T0 + started)
    log_history(db, h)

    # The endpoint pages the log: the same rows as the file, in the same order, shadow and unversioned out.
    conn = served.open_read_only(db)
    try:
        rows = served.rewards(conn, started, 0, len(h) + 10)[0]
    finally:
        conn.close()
    pages, after, more = [], 0, True
    while more:
        page = httpx.get(f"{url}/v1/experiments/rewards", params={"after": after, "limit": 5000}).json()
        pages.append(page["rows"])
        after, more = page["after"], page["more"]
    assert len(pages) == 4 and [r for p in pages for r in p] == rows and len(rows) == len(h)
    got = detector_history(url, since=started)
    assert (got["arm"] == h["arm"].str.removeprefix("v")).all() and (got[LABEL] == h[LABEL]).all()
    assert np.allclose(got["score"], h["score"]) and np.allclose(got["time"], h["time"])
    assert detector_history(url, since=started + 31 * DAY).empty

    # The CronJob's call: every running bandit, its history from the detector.
    capsys.readouterr()
    now = started + 30 * DAY
    assert main([*opts, "update-bandit", "--detector", url, "--now", str(now)]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    stored = ExperimentStore(store).get("b1")
    assert printed["experiment"] == "b1" and printed["shares"] == stored["shares"]
    assert stored["shares"]["v9"] > 0.85 and not stored["bandit"]["fallback"]
    # The same counts as from the joined file (the reward does not depend on the amount).
    settings = ExperimentSettings(alert_budget=0.15)
    from_file = update(ExperimentStore(store).get("b1"), h, now, settings)["bandit"]
    assert (stored["bandit"]["caught"], stored["bandit"]["missed"]) == (
        from_file["caught"],
        from_file["missed"],
    )
    assert sum(from_file["caught"].values()) > 0


def test_the_rewards_endpoint_refuses_bad_queries(detector):
    _, url = detector
    for query in ("since=nan", "limit=0", "after=-1", "after=soon"):
        resp = httpx.get(f"{url}/v1/experiments/rewards?{query}")
        assert resp.status_code == 400 and resp.json()["error"] == "bad_query", query


def test_the_charts_cronjob_updates_the_store_configmap_under_its_role(detector, tmp_path, monkeypatch):
    """The rendered CronJob's own command line, against the loopback API server holding the chart's store
    ConfigMap under the rendered bandit-update Role, and the real detector: exactly one read-modify-write."""
    from test_experiments_chart import ALL, BANDIT, bandit_update_argv
    from test_experiments_cluster import CM, _authorizer

    from relearn.experiments.bandit_live import bandit_params
    from relearn.experiments.kube_store import ConfigMapStore
    from support.chart import NAMESPACE, objects, rendered
    from support.kube_api import FakeApiServer

    db, url = detector
    docs = rendered("default", *ALL)
    (cm,) = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"] == "relearn-fraud-experiments"]
    (role,) = [r for r in objects(docs, "Role") if r["metadata"]["name"] == BANDIT]
    monkeypatch.setenv("RELEARN_EXPERIMENT_ALERT_BUDGET", "0.15")
    with FakeApiServer({CM: cm}, authorize=_authorizer(role)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", token="alice")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        store = ConfigMapStore(f"{NAMESPACE}/relearn-fraud-experiments")
        params = bandit_params(3, ExperimentSettings())
        store.start("b1", {"v7": 34, "v8": 33, "v9": 33}, control="v7", bandit=params)
        # A bandit started 30 days ago, whose traffic the detector logged since.
        started = time.time() - 30 * DAY
        data = json.loads(api.objects[CM]["data"]["experiments.json"])
        data["b1"]["started"] = started
        api.objects[CM]["data"]["experiments.json"] = json.dumps(data)
        h = history(seed=1)
        log_history(db, h.assign(time=h["time"] - T0 + started))
        api.requests.clear()

        argv = bandit_update_argv(docs)[3:]
        argv[argv.index("--detector") + 1] = url  # the Service's in-cluster name, on loopback here
        argv[argv.index("--audit-log") + 1] = str(tmp_path / "audit.jsonl")  # the pod's /tmp emptyDir
        assert main(argv) == 0
        assert [(r["method"], r["path"].split("?")[0]) for r in api.requests] == [("GET", CM)] * 2 + [
            ("PATCH", CM)
        ]
        assert api.forbidden == [] and api.rejected == []
        stored = json.loads(api.objects[CM]["data"]["experiments.json"])["b1"]
        assert stored["shares"]["v9"] > 0.85 and not stored["bandit"]["fallback"]
