"""The feature feed as a real process on a fresh SQLite state (a pytest fixture: import it by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from relearn.demo.stack import free_port
from relearn.features.state import StateSettings, open_state
from support.serving_stack import stop_process, wait_until

T0 = "2026-03-01T12:00:00+00:00"


@pytest.fixture
def feed(tmp_path):
    """A feed process on a fresh SQLite state, and a state client on the same file."""
    path, port = tmp_path / "state.db", free_port()
    env = {**os.environ, "RELEARN_STATE_PATH": str(path), "RELEARN_STATE_LATENESS_SECONDS": "3600"}
    with (tmp_path / "feed.log").open("w") as log:
        argv = [sys.executable, "-m", "relearn.features.feed", "--port", str(port)]
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    state = None
    try:
        wait_until("feed", lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, process,
                   tmp_path / "feed.log", 60, errors=(httpx.HTTPError,))  # fmt: skip
        state = open_state(StateSettings(path=path))
        yield url, state
    finally:
        if state is not None:
            state.close()
        stop_process(process, signal.SIGTERM)
