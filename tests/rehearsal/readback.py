"""What the rehearsal reads back to judge the streaming state, from outside the pods' paths.

- the model inputs the predictor was sent, as the drift detector stored them (its inference log, SQLite in
  WAL mode on its volume, read-only): what the transformer served for each transaction;
- the state's Redis at its pod's address, so these reads are not among the Service's audited clients.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from rehearsal.cluster import Cluster

STATE_PREFIX = "relearn:state:"  # RELEARN_STATE_KEY_PREFIX's default; the chart leaves it


def served(cluster: Cluster, ids: list[str], claim: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Transaction id → the model inputs logged for it (the predictor's payload log, once ingested)."""
    from relearn.monitoring.payloads import request_features

    path = cluster.root / "pvc" / claim / "inference-log.sqlite3"
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            bodies = [b for (b,) in conn.execute("SELECT body FROM events WHERE type LIKE '%.request'")]
        found = {
            r["transaction_id"]: r for b in bodies for r in request_features(b) if r["transaction_id"] in ids
        }
        if set(ids) <= set(found):
            break
        time.sleep(0.5)
    return found


def state_redis(cluster: Cluster, pod: str) -> Any:
    """A client of the state's Redis at its pod (the rendered port)."""
    import redis

    proc = cluster.pods[pod].proc
    return redis.Redis(host=proc.ip, port=proc.ports["redis"], socket_timeout=5, decode_responses=True)
