"""The production configuration on one machine: Feast's online store on Redis, MLflow on PostgreSQL.

Real ``redis-server`` and PostgreSQL servers (Debian packages, started on loopback by the fixtures in
conftest.py) behind the same settings a cluster sets (``RELEARN_FEAST_ONLINE_STORE=redis``,
``RELEARN_FEAST_REDIS_CONNECTION``, ``RELEARN_MLFLOW_TRACKING_URI=postgresql+psycopg2://...``). One
pipeline run, as in tests/serving/test_serving.py, then that module's training/serving parity check,
unchanged, against servers that read features from Redis and the model from the Postgres registry; and a Redis
outage.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import mlflow
import pandas as pd
import pytest
import test_serving
from mlflow import MlflowClient

from conftest import SERVING_RUN
from pipelines.run import run_locally
from relearn.features.spec import MODEL_INPUTS
from relearn.features.store import MERCHANT_TABLE, USER_TABLE
from relearn.settings import RelearnSettings
from support.serving_stack import Server

pytestmark = pytest.mark.slow

MODEL = test_serving.MODEL


@pytest.fixture(scope="module")
def trained(tmp_path_factory, redis_server, postgres_server):
    """A pipeline run against Redis and PostgreSQL; the environment stays set for the module's tests."""
    root = tmp_path_factory.mktemp("production")
    env = {
        "RELEARN_HOME": str(root / "home"),
        "RELEARN_FEAST_ONLINE_STORE": "redis",
        "RELEARN_FEAST_REDIS_CONNECTION": redis_server.connection(db=1),
        "RELEARN_STATE_BACKEND": "redis",  # the transformers' streaming state, as the chart sets it
        "RELEARN_STATE_REDIS_URLS": redis_server.url(db=2),
        "RELEARN_MLFLOW_TRACKING_URI": postgres_server.create_database("mlflow"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # kfp.local's task subprocesses read the same settings
        # MLflow keeps the tracking URI in a module global: restore it after the module, so no later
        # test reaches for this PostgreSQL once it is stopped.
        patch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
        summary = run_locally(SERVING_RUN, root / "runs", root / "home")
        settings = RelearnSettings()
        yield {"home": root / "home", "summary": summary, "root": root, "settings": settings, "env": env}


@pytest.fixture(scope="module")
def stack(trained):
    """Predictor and transformer on loopback with the production settings."""
    root, env = trained["root"], trained["env"]
    predictor = Server("relearn.serving.predictor", [], env, root / "predictor.log")
    args = ["--predictor-host", predictor.grpc_target]
    transformer = Server("relearn.serving.transformer", args, env, root / "transformer.log")
    servers = [predictor, transformer]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield {"predictor": predictor, "transformer": transformer}
    finally:
        for server in servers:
            server.stop()


def test_pipeline_registers_in_postgres_and_materializes_into_redis(trained, redis_server, postgres_server):
    settings = trained["settings"]
    assert settings.feast_online_store == "redis"
    assert settings.tracking_uri().startswith("postgresql+psycopg2://")
    assert trained["summary"]["model_version"] == "1"

    # The registry lives in PostgreSQL (MLflow's own tables), not in a SQLite file beside the home.
    aliases = postgres_server.query("mlflow", "SELECT alias, version FROM registered_model_aliases")
    assert sorted(aliases) == [("challenger", 1), ("champion", 1)]
    assert postgres_server.query("mlflow", "SELECT name FROM registered_models") == [(MODEL,)]
    assert not (trained["home"] / "mlflow.db").exists()
    champion = MlflowClient(settings.tracking_uri()).get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["data_window"] == "2026-02-02+20d" and champion.tags["git_sha"] == "0123abc"

    # The online store is Redis: one hash per user and per merchant (all within the TTL), in the
    # configured database only.
    feature_repo = settings.feature_repo()
    assert not (feature_repo / "data" / "online.db").exists()
    assert "type: redis" in (feature_repo / "feature_store.yaml").read_text()
    offline = settings.offline_dir()
    users = pd.read_parquet(offline / USER_TABLE, columns=["user_id"])["user_id"].nunique()
    merchants = pd.read_parquet(offline / MERCHANT_TABLE, columns=["merchant_id"])["merchant_id"].nunique()
    assert redis_server.client(db=1).dbsize() == users + merchants > 0
    assert redis_server.client(db=0).dbsize() == 0

    # The champion loads from the Postgres registry and scores.
    mlflow.set_tracking_uri(settings.tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    training_set = pd.read_parquet(trained["summary"]["run_dir"] + "/features/training_set")
    predictions = model.predict(training_set[list(MODEL_INPUTS)].head(200))
    assert predictions["score"].between(0, 1).all() and predictions["score"].std() > 0


def test_transformer_scores_equal_offline_scores_on_redis(trained, stack):
    """The local default's parity check, unchanged: online features from Redis == point-in-time join."""
    test_serving.test_transformer_scores_equal_offline_scores(trained, stack)


def test_redis_outage_is_a_quick_503_and_serving_recovers(trained, stack, redis_server):
    url = f"{stack['transformer'].url}/v1/models/{MODEL}:predict"
    body = {"instances": test_serving.v1_instances(test_serving.requests_at_end(trained, n=2))}
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs: connections open, no answers
    try:
        start = time.perf_counter()
        response = httpx.post(url, json=body, timeout=10)
        assert response.status_code == 503, response.text
        assert "feature state unavailable" in response.json()["error"]
        assert time.perf_counter() - start < 4
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while (response := httpx.post(url, json=body, timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)
