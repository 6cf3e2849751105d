"""Processes of the serving benchmarks: free ports, servers started in their own session, CPU time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.table import cpu_seconds as cpu_seconds  # re-exported to the serving benchmarks
from relearn.demo.stack import free_port as free_port  # one definition (re-exported to the benchmarks)

HOST = "127.0.0.1"
MODEL = "relearn-fraud"
ROOT = Path(__file__).resolve().parents[1]
PLATFORM_PY = sys.executable


# --------------------------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Server:
    """A server process we start (own session, so it and its children are stopped together)."""

    name: str
    cmd: list[str]
    http_port: int | None = None
    grpc_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None
    ready_s: float | None = None
    log_path: Path | None = None

    def start(self, logdir: Path) -> None:
        self.log_path = logdir / f"{self.name}.log"
        env = {**os.environ, **self.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._started = time.perf_counter()

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds from process start to ready (v2 REST /v2/health/ready, else gRPC ServerReady)."""
        deadline = self._started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if self._is_ready():
                self.ready_s = time.perf_counter() - self._started
                return self.ready_s
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")

    def _is_ready(self) -> bool:
        if self.http_port:
            try:
                url = f"http://{HOST}:{self.http_port}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        try:
            with grpc.insecure_channel(f"{HOST}:{self.grpc_port}") as channel:
                return (
                    pb_grpc.GRPCInferenceServiceStub(channel)
                    .ServerReady(pb.ServerReadyRequest(), timeout=1)
                    .ready
                )
        except grpc.RpcError:
            return False

    def pids(self) -> list[int]:
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group of the process we started
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process (and of its children) onto ``cpus`` (threads started later inherit it)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    for proc in pids:
        for tid in os.listdir(f"/proc/{proc}/task") if os.path.isdir(f"/proc/{proc}/task") else []:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(int(tid), cpus)
