"""Shared fixtures: every test gets its own relearn home (MLflow, Feast, data) under tmp_path."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from relearn.settings import RelearnSettings
from serving_stack import PostgresServer, RedisServer, postgres_binary

# tests/drift need alibi-detect, which lives in the drift environment (it pins numpy<2): `make test` runs
# them there; the platform environment skips the folder.
collect_ignore = [] if importlib.util.find_spec("alibi_detect") else ["drift"]


@pytest.fixture
def settings(tmp_path, monkeypatch) -> RelearnSettings:
    """RelearnSettings rooted in a fresh temporary home, also exported for subprocesses."""
    home = tmp_path / "relearn-home"
    # Environment, not a mock: subprocesses (kfp.local tasks) read the same settings.
    monkeypatch.setenv("RELEARN_HOME", str(home))
    return RelearnSettings(home=home)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (Debian package) on a free loopback port, stopped at the end of the session."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server missing: `make setup` installs Debian's redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian package, fresh initdb) on a free loopback port, for the session."""
    if postgres_binary("initdb") is None or postgres_binary("postgres") is None:
        pytest.skip("PostgreSQL missing: `make setup` installs Debian's postgresql")
    with PostgresServer() as server:
        yield server
