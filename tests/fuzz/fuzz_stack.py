"""The fuzz suite's servers: every public endpoint of relearn as a real process on 127.0.0.1, started once.

predictor (tiny model v1 of ``make_artifacts``), transformer (SQLite streaming state, predictor over gRPC),
rollout router (the predictor as its stable version), drift detector (its own environment, a reference from
the same tiny model) and feature feed (its own SQLite state). Each process writes one log file, which
:class:`LogWatch` reads from an offset: what a fuzz run logged, and nothing before it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.rollout_stack import DRIFT_PYTHON, Pool, make_artifacts
from support.serving_stack import PYTHON, Server, free_port, stop_process, wait_until

MODEL = "relearn-fraud"
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", re.M)


@dataclass
class Process:
    """A server subprocess (router, detector, feed) logging to ``log_path``."""

    name: str
    url: str
    log_path: Path
    process: subprocess.Popen

    def wait_ready(self, path: str, timeout: float = 120.0) -> None:
        ready = lambda: httpx.get(self.url + path, timeout=1).status_code == 200  # noqa: E731
        wait_until(self.name, ready, self.process, self.log_path, timeout, errors=(httpx.HTTPError,))


def spawn(name: str, cmd: list[str], env: dict[str, str], url: str, tmp: Path) -> Process:
    log_path = tmp / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    return Process(name, url, log_path, process)


class LogWatch:
    """What a server logged since :meth:`mark`: its WARNING (and worse) lines and tracebacks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    @staticmethod
    def warnings(text: str) -> list[str]:
        """Lines at WARNING or above, in relearn's JSON logs or Python's plain format."""
        levels = re.compile(r'"level": "(warning|error|critical)"|\b(WARNING|ERROR|CRITICAL)\b')
        return [line for line in text.splitlines() if levels.search(line)]


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{'name{labels}': value}`` (counters and gauges alike)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {key: float(value) for key, value in _SAMPLE.findall(text)}


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        v for key, v in samples.items() if key.partition("{")[0] == name and all(w in key for w in wanted)
    )


class FuzzStack:
    """The five servers; ``start`` then ``wait_ready``, ``close`` stops them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        artifact = make_artifacts(tmp / "models")["1"]
        self.pool = Pool.scored_by(artifact, n=500)
        args = ["--model-uri", str(artifact), "--model-version", "1", "--workers", "1"]
        self.predictor = Server("relearn.serving.predictor", args, {}, tmp / "predictor.log")
        state = {"RELEARN_STATE_PATH": str(tmp / "transformer-state.db")}
        targs = ["--predictor-host", self.predictor.grpc_target, "--workers", "1"]
        self.transformer = Server("relearn.serving.transformer", targs, state, tmp / "transformer.log")
        self.router = self._router()
        self.detector = self._detector()
        port = free_port()
        self.feed = spawn(
            "feed",
            [PYTHON, "-m", "relearn.features.feed", "--port", str(port)],
            {"RELEARN_STATE_PATH": str(tmp / "feed-state.db")},
            f"http://127.0.0.1:{port}",
            tmp,
        )

    def _router(self) -> Process:
        from relearn.rollout.local_backend import LocalBackend

        state = self.tmp / "router-state.json"
        LocalBackend(state).register("1", rest=self.predictor.url, grpc=self.predictor.grpc_target)
        rest, self.router_grpc = free_port(), f"127.0.0.1:{free_port()}"
        cmd = [PYTHON, "-m", "relearn.rollout.router", "--state", str(state), "--seed", "3"]
        cmd += ["--rest-port", str(rest), "--grpc-port", self.router_grpc.rpartition(":")[2]]
        return spawn("router", cmd, {}, f"http://127.0.0.1:{rest}", self.tmp)

    def _detector(self) -> Process:
        port = free_port()
        env = {
            "RELEARN_DRIFT_HOST": "127.0.0.1",
            "RELEARN_DRIFT_PORT": str(port),
            "RELEARN_DRIFT_DATA_DIR": str(self.tmp / "drift"),
            "RELEARN_DRIFT_REFERENCE_PATH": str(self.pool.reference(self.tmp / "reference.parquet")),
            "RELEARN_DRIFT_SQLITE_SYNCHRONOUS": "NORMAL",
            "RELEARN_DRIFT_REPORTS": "false",
        }
        cmd = [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server"]
        return spawn("detector", cmd, env, f"http://127.0.0.1:{port}", self.tmp)

    def start(self) -> FuzzStack:
        self.predictor.start()
        self.transformer.start()
        return self

    def wait_ready(self) -> FuzzStack:
        self.predictor.wait_ready()
        self.transformer.wait_ready()
        self.router.wait_ready("/v2/health/ready")
        self.detector.wait_ready("/ready")
        self.feed.wait_ready("/healthz")
        return self

    def close(self) -> None:
        procs = [self.router, self.detector, self.feed]
        for server in (self.predictor, self.transformer, *procs):
            p = server.process
            if p is not None and p.poll() is None:
                p.terminate()  # all first: they shut down in parallel
        for p in procs:
            stop_process(p.process)
        self.transformer.stop()
        self.predictor.stop()
