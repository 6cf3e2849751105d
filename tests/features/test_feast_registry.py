"""The cluster's Feast registry: a real `feast serve_registry` process, Redis, and two clients that share it.

A pipeline pod (another namespace, no shared volume) registers the definitions and materializes to Redis
through the registry server; a transformer (own home, no offline tables) reads the definitions from the same
server and looks up the online features. Both only set ``RELEARN_FEAST_REGISTRY=grpc://<host>:<port>``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc
import pandas as pd
import pytest
from feast.infra.registry.remote import RemoteRegistry
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relearn.features import store as fstore
from relearn.features.spec import FEATURE_SERVICE, MERCHANT_VIEW, USER_VIEW
from relearn.features.transforms import cold_start_mask, model_inputs
from relearn.settings import RelearnSettings
from support.frames import MIN, world
from support.serving_stack import StoreServer

pytestmark = pytest.mark.slow

FEAST = str(Path(sys.executable).with_name("feast"))
REDIS_DB = 7  # the session's Redis is shared: a database of our own


class RegistryServer(StoreServer):
    """``feast serve_registry`` over a file registry, as the chart's registry server runs it."""

    name = "feast-registry"

    def __init__(self) -> None:
        super().__init__()
        # The server's own repo: relearn writes its feature_store.yaml (file registry under data/).
        self.settings = RelearnSettings(home=self.directory, feast_repo=self.directory / "repo")
        self.repo = fstore.write_repo(self.settings)

    @property
    def registry_file(self) -> Path:
        return Path(self.settings.registry())

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [FEAST, "-c", str(self.repo), "serve_registry", "--port", str(self.port)]

    def ping(self) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def registry_server():
    if shutil.which(FEAST) is None:
        pytest.skip(f"{FEAST} missing")
    with RegistryServer() as server:
        yield server


def _client(home: Path, registry: str, redis_server) -> RelearnSettings:
    return RelearnSettings(
        home=home,
        feast_online_store="redis",
        feast_redis_connection=redis_server.connection(REDIS_DB),
        feast_registry=registry,
    )


def _requests(last: pd.Timestamp) -> pd.DataFrame:
    pairs = [("u1", "m1"), ("u2", "m1"), ("u1", "m2"), ("ghost", "m1")]
    return pd.DataFrame(
        {
            "transaction_id": [f"r{i}" for i in range(len(pairs))],
            "event_timestamp": [last + 10 * MIN + pd.Timedelta(seconds=i) for i in range(len(pairs))],
            "user_id": [u for u, _ in pairs],
            "merchant_id": [m for _, m in pairs],
            "amount": [80.0, 12.0, 3.0, 40.0],
            "currency": "EUR",
            "merchant_category": "grocery",
            "channel": "pos",
            "country": ["FR", "DE", "FR", "DE"],
            "device_id": ["d2", "d9", "d3", "d1"],
        }
    )


def test_apply_materialize_and_online_lookup_through_the_registry_server(
    registry_server, redis_server, tmp_path
):
    redis_server.client(REDIS_DB).flushdb()
    pipeline = _client(tmp_path / "pipeline", registry_server.address, redis_server)
    config = fstore.store_config(pipeline)
    assert config["registry"] == {"registry_type": "remote", "path": f"127.0.0.1:{registry_server.port}"}

    # The features step of a pipeline pod: tables, apply, materialize, training set (all in one pod).
    tx, labels = world()
    fstore.write_feature_tables(tx, labels, pipeline)
    store = fstore.get_store(pipeline)
    assert isinstance(store.registry, RemoteRegistry)
    fstore.apply(store, pipeline)
    last = tx["event_timestamp"].max()
    fstore.materialize(store, (last + pd.Timedelta(seconds=1)).to_pydatetime())
    rows = fstore.training_set(store, tx, labels, label_cutoff=(last + pd.Timedelta(days=30)).to_pydatetime())
    assert len(rows) == len(tx)

    # The server wrote the definitions into its own file registry; the client wrote none.
    saved = RegistryProto.FromString(registry_server.registry_file.read_bytes())
    assert {v.spec.name for v in saved.feature_views} == {USER_VIEW, MERCHANT_VIEW}
    assert [s.spec.name for s in saved.feature_services] == [FEATURE_SERVICE]
    assert not list((tmp_path / "pipeline").rglob("registry.db"))

    # A transformer elsewhere: no offline tables, same registry server and Redis.
    transformer = _client(tmp_path / "transformer", registry_server.address, redis_server)
    serving = fstore.get_store(transformer)
    requests = _requests(last)
    online = fstore.online_model_inputs(serving, requests)
    expected = model_inputs(fstore.historical_features(store, requests))
    pd.testing.assert_frame_equal(online, expected, check_exact=False, atol=1e-5)
    assert cold_start_mask(fstore.online_features(serving, requests)).tolist() == [False, False, False, True]

    # Lookups read a snapshot of the registry: they go on while the registry server restarts.
    registry_server.stop()
    pd.testing.assert_frame_equal(fstore.online_model_inputs(serving, requests), online)


def test_local_mode_keeps_a_file_registry(tmp_path):
    local = RelearnSettings(home=tmp_path)
    registry = fstore.store_config(local)["registry"]
    assert registry["path"] == str(tmp_path.resolve() / "feature_repo/data/registry.db")
    assert registry["registry_store_type"] == fstore.FILE_REGISTRY_STORE  # replaced atomically
    assert type(fstore.get_store(local).registry).__name__ == "Registry"  # Feast's file registry
