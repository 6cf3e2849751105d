"""Redis password auth (``feast.redis.auth``), run the way the kubelet would run the rendered containers.

The primary and a read replica start from their rendered ``command`` + ``args`` and env (the password from
a Secret through ``secretKeyRef``) with Debian's ``redis-server`` (7.0; the image pins 7.4, whose
``src/server.c`` reads ``-`` as stdin config in the same way), their readiness probes run as rendered, and
Feast's Redis online store connects as the KFP run pods do (the host from the ConfigMap, the password from
the Secret). The password must not appear in any process's argv (``/proc/<pid>/cmdline`` is
world-readable), and a client without it must be refused. The streaming state's Redis, which shares the
password: tests/chart/test_chart_state.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from relearn.features import store as fstore
from relearn.settings import RelearnSettings
from support.chart import _tool, needs_helm, objects, rendered
from support.crds import CRDS, crd_errors
from support.frames import MIN, world
from support.redis_auth import AUTH, PASSWORD, RenderedRedis, needs_redis
from support.redis_auth import kubelet_env as _env


def _deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [d for d in objects(docs, "Deployment") if d["metadata"]["name"] == name]
    return found


def _transformer_env(*extra: str) -> dict[str, str]:
    """The fraud transformer's env, as its container sees it."""
    (isvc,) = [
        d
        for d in objects(rendered("default", *extra), "InferenceService")
        if "shadow" not in d["metadata"]["name"]
    ]
    return _env(isvc["spec"]["transformer"]["containers"][0])


@pytest.fixture
def redis_pair(tmp_path: Path) -> Iterator[tuple[RenderedRedis, RenderedRedis]]:
    docs = rendered("default", *AUTH, "--set", "feast.redis.readReplicas=1")
    primary = RenderedRedis(_deployment(docs, "relearn-redis"), tmp_path / "primary")
    replica = None
    try:
        primary.wait_ready()
        replica = RenderedRedis(
            _deployment(docs, "relearn-redis-replica"), tmp_path / "replica", primary.port
        )
        replica.wait_ready()
        yield primary, replica
    finally:
        for server in (replica, primary):
            if server is not None:
                server.stop()


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                out[int(proc.name)] = (proc / "cmdline").read_bytes()
    return out


@needs_helm
@needs_redis
def test_redis_requires_the_password_and_no_argv_holds_it(redis_pair, tmp_path: Path) -> None:
    import redis

    primary, replica = redis_pair
    # The shell execs redis-server (PID 1 in the pod, SIGTERM reaches it); its argv has no password.
    cmdlines = _cmdlines()
    assert cmdlines[primary.proc.pid].startswith(b"redis-server\x00-\x00--port\x00"), "config on stdin"
    leaks = {pid: c for pid, c in cmdlines.items() if PASSWORD.encode() in c or b'Pa\\"ss' in c}
    assert leaks == {}, leaks
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    assert "redis-server" in ps and PASSWORD not in ps
    # The script's only other commands: printf is a builtin of the image's sh (dash), sed gets it on stdin.
    assert (
        "builtin" in subprocess.run(["sh", "-c", "command -V printf"], capture_output=True, text=True).stdout
    )

    # Without the password: refused, and the readiness probe fails (it would not on NOAUTH alone).
    anonymous = subprocess.run(
        ["redis-cli", "-p", str(primary.port), "ping"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin"},
    )
    assert "NOAUTH" in anonymous.stdout
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=primary.port).ping()
    assert not primary.probe({**primary.env, "REDISCLI_AUTH": "wrong"})
    assert redis.Redis(port=primary.port, password=PASSWORD).ping()
    # The replica authenticated to the primary (masterauth): its probe waits for master_link_status:up.
    info = redis.Redis(port=replica.port, password=PASSWORD).info("replication")
    assert info["role"] == "slave" and info["master_link_status"] == "up"

    # Feast's online store as a KFP run pod opens it: the host from the ConfigMap, the password from the
    # Secret (RELEARN_REDIS_PASSWORD); materialized through the primary, read through the replica.
    pipeline = RelearnSettings(
        home=tmp_path / "feast",
        feast_online_store="redis",
        feast_redis_connection=f"127.0.0.1:{primary.port}",
        redis_password=PASSWORD,
    )
    tx, labels = world()
    fstore.write_feature_tables(tx, labels, pipeline)
    store = fstore.get_store(pipeline)
    fstore.apply(store, pipeline)
    last = tx["event_timestamp"].max()
    fstore.materialize(store, (last + pd.Timedelta(seconds=1)).to_pydatetime())
    requests = tx[["transaction_id", "event_timestamp", "user_id", "merchant_id"]].head(3).copy()
    requests["event_timestamp"] = last + 10 * MIN
    written = fstore.online_features(store, requests)
    assert written["user_txn_count_7d"].notna().all(), "materialized through the authenticated primary"

    serving = fstore.get_store(
        pipeline.model_copy(update={"feast_redis_connection": f"127.0.0.1:{replica.port}"})
    )
    deadline = time.monotonic() + 10
    while True:  # replication is asynchronous
        online = fstore.online_features(serving, requests)
        if online["user_txn_count_7d"].notna().all() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pd.testing.assert_frame_equal(online, written)


@needs_helm
def test_auth_is_off_by_default_and_the_default_render_is_unchanged() -> None:
    docs = rendered("default", "--set", "feast.redis.readReplicas=1")
    for name in ("relearn-redis", "relearn-redis-replica"):
        (container,) = _deployment(docs, name)["spec"]["template"]["spec"]["containers"]
        assert "command" not in container and "env" not in container, name  # the image's entrypoint
        assert container["args"][:2] == ["--port", "6379"]
    probe = _deployment(docs, "relearn-redis")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"] == ["sh", "-c", "redis-cli -p 6379 ping"]
    assert "RELEARN_STATE_REDIS_PASSWORD" not in _transformer_env()
    assert _transformer_env(*AUTH)["RELEARN_STATE_REDIS_PASSWORD"] == PASSWORD
    text = yaml.safe_dump_all(docs)
    assert "RELEARN_REDIS_PASSWORD" not in text and "REDISCLI_AUTH" not in text


@needs_helm
def test_auth_render_is_valid_and_checkov_clean(tmp_path: Path) -> None:
    """The Secret refs validate against KServe's CRD (closed), and checkov finds nothing with auth on."""
    docs = rendered("default", *AUTH, "--set", "feast.redis.readReplicas=1", "--set", "shadow.enabled=true")
    # ConfigMaps keep the host part: the kubelet expands $(VAR) in a container's env values only.
    assert [d for d in objects(docs, "ConfigMap") if "password=" in json.dumps(d)] == []
    if CRDS.is_dir():
        for isvc in objects(docs, "InferenceService"):
            assert crd_errors(isvc) == [], isvc["metadata"]["name"]
    checkov = _tool("checkov")
    if checkov is None:
        pytest.skip("checkov missing: run .ci/install-tools.sh")
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump_all(docs))
    env = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    report = json.loads(out.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0, out.stdout[-4000:]
