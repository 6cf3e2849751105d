"""Fixtures of the drift-detector tests: generator streams as model inputs, and a real server on loopback."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest

from relearn.data.generator import GeneratorConfig
from relearn.demo.stack import free_port
from relearn.features.spec import MODEL_INPUTS
from relearn.monitoring.simulate import model_input_stream, time_ordered, toy_scores

START = datetime(2024, 1, 1, tzinfo=UTC)
REFERENCE_START = pd.Timestamp("2024-01-08", tz="UTC")  # entity windows are filled after a week
REFERENCE_DAYS = 7  # whole days: every hour and weekday, for the hour-matched reference
ONSET = datetime(2024, 1, 18, tzinfo=UTC)  # three stationary days after the reference, then the scenario
WINDOW = 1000


_LABELS: dict[str, pd.DataFrame] = {}


@functools.lru_cache(maxsize=8)
def scenario_stream(scenario: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(reference, before, after)`` in time order: reference = Jan 8-14 (whole days), then the stream
    before and after the onset (Jan 18), unshuffled. Same seed → same data.
    """
    config = GeneratorConfig(
        days=22, n_users=1200, n_merchants=150, seed=7, scenario=scenario, onset=ONSET, start=START
    )
    stream, labels, onset = model_input_stream(config)
    _LABELS[scenario] = labels
    stream["score"] = toy_scores(stream, seed=1)
    reference, rest = time_ordered(stream, REFERENCE_START, REFERENCE_DAYS)
    before = rest[rest["event_timestamp"] < onset].reset_index(drop=True)
    after = rest[rest["event_timestamp"] >= onset].reset_index(drop=True)
    return reference, before, after


def scenario_labels(scenario: str) -> pd.DataFrame:
    """The chargebacks of :func:`scenario_stream`'s world (``transaction_id, chargeback_timestamp``)."""
    scenario_stream(scenario)
    return _LABELS[scenario]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    """``python -m relearn.monitoring.server`` as a subprocess on 127.0.0.1."""

    def __init__(self, data_dir: Path, reference: Path | None, **options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            RELEARN_DRIFT_HOST="127.0.0.1",
            RELEARN_DRIFT_PORT=str(self.port),
            RELEARN_DRIFT_DATA_DIR=str(data_dir),
            RELEARN_DRIFT_WINDOW_SIZE=str(WINDOW),
            RELEARN_DRIFT_POLL_S="0.05",
        )
        if reference is not None:  # else from the MLflow registry (options)
            env["RELEARN_DRIFT_REFERENCE_PATH"] = str(reference)
        env.update({f"RELEARN_DRIFT_{k.upper()}": v for k, v in options.items()})
        self.log = (data_dir.parent / f"server-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relearn.monitoring.server"], env=env, stdout=self.log, stderr=self.log
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited"
            try:
                if get_json(self.url + "/ready", 1.0).get("ready"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def wait_processed(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = get_json(self.url + "/status")
            if predicate(status):
                return status
            time.sleep(0.1)
        raise TimeoutError(f"condition not met: {status}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def reference_file(tmp_path) -> Path:
    reference, _, _ = scenario_stream("covariate_shift")
    path = tmp_path / "reference.parquet"
    reference[[*MODEL_INPUTS, "score"]].to_parquet(path, index=False)
    return path


@pytest.fixture
def webhook():
    """A small CloudEvents sink on loopback; yields ``(url, received)``."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append({"type": self.headers["ce-type"], "data": json.loads(body)})
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/", received
    finally:
        httpd.shutdown()
        httpd.server_close()
