"""Ingest of the drift benchmark: the real detector server on loopback.

Client processes post over kept-alive connections; the acknowledged events are compared with the stored ones.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from benchmarks.table import Row, human

if TYPE_CHECKING:
    pass


def _batched(events: list[tuple[dict[str, str], bytes]], size: int) -> list[tuple[dict[str, str], bytes]]:
    """The same events as CloudEvents batched-mode POSTs of ``size`` structured envelopes each."""
    out = []
    for i in range(0, len(events), size):
        envelopes = [
            {k[3:]: v for k, v in h.items() if k.startswith("ce-")}
            | {"datacontenttype": "application/json", "data": json.loads(body)}
            for h, body in events[i : i + size]
        ]
        headers = {"content-type": "application/cloudevents-batch+json"}
        out.append((headers, json.dumps(envelopes, separators=(",", ":")).encode()))
    return out


def _events(n: int) -> list[tuple[dict[str, str], bytes]]:
    from relearn.events import REQUEST_TYPE, RESPONSE_TYPE
    from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS

    instance = {f: (CATEGORICAL_INPUTS[f][0] if f in CATEGORICAL_INPUTS else 1.0) for f in MODEL_INPUTS}
    out = []
    for i in range(n // 2):
        for kind, body in (
            (REQUEST_TYPE, {"instances": [{"transaction_id": f"t{i}", **instance}]}),
            (RESPONSE_TYPE, {"predictions": [0.1]}),
        ):
            headers = {
                "ce-specversion": "1.0",
                "ce-id": f"bench-{i}",
                "ce-type": kind,
                "ce-source": "http://localhost:9081/fraud",
                "ce-time": "2024-01-20T12:00:00Z",
                "ce-inferenceservicename": "fraud",
                "ce-namespace": "relearn",
                "ce-component": "predictor",
                "ce-endpoint": "default",
                "content-type": "application/json",
            }
            out.append((headers, json.dumps(body).encode()))
    return out


def _client(args: tuple[int, list[tuple[dict[str, str], bytes]], int]) -> tuple[int, float, float]:
    """One client process: ``connections`` keep-alive connections, one thread each.

    Returns:
        ``(acknowledged, first send, last answer)``, wall-clock times comparable across processes.
    """
    from concurrent.futures import ThreadPoolExecutor

    port, events, connections = args
    with ThreadPoolExecutor(connections) as pool:
        done = list(pool.map(_connection, [(port, events[i::connections]) for i in range(connections)]))
    return sum(d[0] for d in done), min(d[1] for d in done), max(d[2] for d in done)


def _wire(port: int, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 POST, encoded once up front (the client must not be what limits the rate)."""
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _connection(args: tuple[int, list[tuple[dict[str, str], bytes]]]) -> tuple[int, float, float]:
    """Post events one at a time on a keep-alive connection (like one logger worker); count the 202s."""
    import socket

    port, events = args
    wires = [_wire(port, headers, body) for headers, body in events]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    acked, buffer = 0, b""
    started = time.time()
    try:
        for wire in wires:
            sock.sendall(wire)
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            acked += status == 202
    finally:
        sock.close()
    return acked, started, time.time()


def ingest_row(n: int, clients: int, connections: int, note: str = "", batch: int = 1) -> Row:
    """Events/s acknowledged by a real server on loopback; acknowledged must equal stored.

    ``note``: a row without the goal (e.g. the concurrency of one KServe logger), for information.
    ``batch``: events per POST (above 1: CloudEvents batched mode, as the predictor's logger sends them).
    """
    from relearn.features.spec import MODEL_INPUTS

    events = _events(n)
    posts = _batched(events, batch) if batch > 1 else events
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.parquet"
        pd.DataFrame({f: [0.0] for f in MODEL_INPUTS if f != "hour_of_day"} | {"score": [0.1]}).to_parquet(
            reference
        )
        with socket_port() as port:
            pass
        env = dict(os.environ, RELEARN_DRIFT_PORT=str(port), RELEARN_DRIFT_HOST="127.0.0.1")
        env.update(RELEARN_DRIFT_DATA_DIR=f"{tmp}/data", RELEARN_DRIFT_REFERENCE_PATH=str(reference))
        env.update(RELEARN_DRIFT_REPORTS="false", RELEARN_DRIFT_WINDOW_SIZE="100000")
        log = open(f"{tmp}/server.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "relearn.monitoring.server"], env=env, stdout=log, stderr=log
        )
        try:
            _wait_ready(port, proc)
            # Requests and responses of one id may race across connections: the monitor pairs them.
            shares = [(port, posts[i::clients], connections) for i in range(clients)]
            with multiprocessing.get_context("spawn").Pool(clients) as pool:
                done = pool.map(_client, shares)  # timed from the first send to the last answer
            acked = sum(d[0] for d in done) * batch  # a 202 acknowledges the whole batch
            seconds = max(d[2] for d in done) - min(d[1] for d in done)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
        stored = sqlite3.connect(f"{tmp}/data/inference-log.sqlite3").execute("SELECT COUNT(*) FROM events")
        stored_n = int(stored.fetchone()[0])
    acked = min(acked, len(events))  # the last batch may be short
    rate = acked / seconds
    lost = stored_n != acked or acked != len(events)
    mode = f"batched {batch}/POST, " if batch > 1 else ""
    return Row(
        f"ingest ({mode}{clients}x{connections} conns, {os.cpu_count()} cores)",
        f"{human(len(events))} events",
        seconds,
        f"{human(rate)}/s",
        f"stored {stored_n}/{acked} acked",
        f"{note}; none lost" if note else ">= 5k events/s on 2 cores, none lost",
        (not lost) if note else rate >= 5000 and not lost,
        rate,
    )


class socket_port:  # noqa: N801 - used as a context manager
    """A free loopback port."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("drift server exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if json.loads(response.read()).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("drift server not ready")
