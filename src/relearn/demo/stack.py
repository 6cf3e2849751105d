"""Child processes of the demo on loopback: start, wait until ready, stop them all (no process left behind).

Each child runs in a session of its own, so stopping it also stops what it started (the pipeline's task
subprocesses, say) and a Ctrl-C on the terminal reaches only the demo, which then stops them in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relearn.errors import RelearnError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class StackError(RelearnError, RuntimeError):
    """A child exited early or did not become ready; the message names its log."""


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen
    log: Path
    ports: tuple[int, ...] = ()


@dataclass
class Processes:
    """The demo's children, stopped in reverse start order."""

    log_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], ports: tuple[int, ...] = (), **env: str) -> Child:
        """Start ``argv`` with the demo's environment (plus ``env``), output to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **env},
                start_new_session=True,
            )
        child = Child(name, process, log, ports)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise when a long-running child has exited."""
        for child in self.children:
            if child.process.poll() is not None and child.ports:
                raise StackError(f"{child.name} exited with {child.process.returncode}; see {child.log}")

    def wait_until(self, child: Child, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it holds; fail early when ``child`` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise StackError(f"{child.name} exited with {child.process.returncode}; see {child.log}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.25)
        raise StackError(f"{child.name} not ready after {timeout:.0f} s; see {child.log}")

    def wait_http(self, child: Child, url: str, timeout: float = 120.0) -> None:
        """Wait until ``url`` answers 200."""
        self.wait_until(child, lambda: httpx.get(url, timeout=1.0).status_code == 200, timeout)

    def stop(self, child: Child, timeout: float = 10.0, gone_within: float = 10.0) -> None:
        """Stop a child and everything in its session, and wait until it is all gone.

        SIGTERM to the child's process group, SIGKILL after ``timeout``; then SIGKILL to whatever is left in
        its session (workers that made groups of their own) until none is alive, for ``gone_within`` s. A
        SIGKILLed process lives on for a moment while the kernel tears it down: judging right after the
        signal saw live "leftovers" of a clean stop, so the stop waits for them to be gone (bounded).
        """
        if child.process.poll() is None:
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(5)
        deadline = time.monotonic() + gone_within
        while (members := session_members(child.process.pid)) and time.monotonic() < deadline:
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def stop_all(self) -> list[int]:
        """Stop every child (last started first); returns the ports still open afterwards (none, normally)."""
        for child in reversed(self.children):
            self.stop(child)
        ports = [p for c in self.children for p in c.ports]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(port_open(p) for p in ports):
            time.sleep(0.1)
        return [p for p in ports if port_open(p)]


def _live_sessions() -> dict[int, list[int]]:
    """Session id → its live (not zombie, not dead) processes, from /proc."""
    sessions: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if fields[0] not in ("Z", "X"):
            sessions.setdefault(int(fields[3]), []).append(int(stat.parent.name))
    return sessions


def session_members(session: int) -> list[int]:
    """The live processes of one session (a child started with ``start_new_session``: its pid)."""
    return _live_sessions().get(session, [])


def left_running(children: list[Child]) -> list[str]:
    """Children with a live (not zombie) process in their session; none after :meth:`Processes.stop_all`."""
    live = _live_sessions()
    return sorted({child.name for child in children if live.get(child.process.pid)})


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def prometheus_config(path: Path, targets_file: Path, interval: str = "1s") -> None:
    """A Prometheus config scraping the targets listed in ``targets_file`` (file service discovery)."""
    path.write_text(
        f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
        "scrape_configs:\n"
        "  - job_name: relearn\n"
        f"    file_sd_configs: [{{files: ['{targets_file}'], refresh_interval: 2s}}]\n"
    )


def write_targets(targets_file: Path, targets: dict[str, int]) -> None:
    """Write the scrape targets (``name → port``) atomically; Prometheus picks the change up by itself."""
    groups = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"process": name}} for name, port in targets.items()
    ]
    tmp = targets_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(targets_file)


def start_state_redis(procs: Processes, home: Path, binary: str, appendfsync: str) -> dict[str, str]:
    """A redis-server on loopback for the streaming feature state, as the chart runs it (append-only file).

    The ``RELEARN_STATE_*`` variables that point at it are added to ``procs.env``, so every child started
    after this (feed, transformer, retraining runs) and the bootstrap use it; they are also returned.
    """
    port = free_port()
    data = home / "state-redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", ""]
    child = procs.start("state-redis", [*argv, "--appendonly", "yes", "--appendfsync", appendfsync], (port,))
    procs.wait_until(child, lambda: port_open(port), timeout=30)
    env = {"RELEARN_STATE_BACKEND": "redis", "RELEARN_STATE_REDIS_URLS": f"redis://127.0.0.1:{port}/0"}
    procs.env.update(env)
    return env
