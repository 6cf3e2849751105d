"""Redis as charts/relearn renders it (password auth from a Secret), run the way the kubelet would run it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rehearsal.kubelet import expand
from relearn.demo.stack import free_port

SECRET, KEY = "redis-auth", "redis-password"
# A quote and a backslash (escaped in the config on stdin), and a $(...) the kubelet must not expand again.
PASSWORD = 'Pa"ss\\w0rd-$(HOME)-kq7Zt'
AUTH = ("--set", f"feast.redis.auth.existingSecret={SECRET}", "--set", f"feast.redis.auth.key={KEY}")
PRIMARY_HOST = "relearn-redis.relearn.svc.cluster.local"

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server missing: `make setup` installs Debian's redis-server",
)


def kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet builds it: Secret refs resolved, ``$(VAR)`` of earlier vars
    expanded."""
    secrets = {SECRET: {KEY: PASSWORD}}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


class RenderedRedis:
    """One rendered Redis container as a local process: its argv and env, its readiness probe.

    Only what a pod's network gives differently is rewritten: the port (a free one), ``/data`` (a temp
    directory), the primary's Service name (loopback) and ``--bind 127.0.0.1`` (the image listens on all
    interfaces of its own network namespace); and the process title stays the exec'd argv.
    """

    def __init__(self, deployment: dict[str, Any], data: Path, primary_port: int | None = None) -> None:
        (self.container,) = deployment["spec"]["template"]["spec"]["containers"]
        self.port = free_port()
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **kubelet_env(self.container)}
        argv = [*self.container.get("command", ["redis-server"]), *self.container["args"]]
        self.argv = [
            self._local(a, before, data, primary_port)
            for before, a in zip(["", *argv[:-1]], argv, strict=True)
        ]
        # Redis overwrites its argv with a title once started (set-proc-title yes): off here, so that
        # /proc/<pid>/cmdline keeps the argv it was exec'd with, which is what is visible until then.
        self.argv += ["--bind", "127.0.0.1", "--set-proc-title", "no"]
        data.mkdir(parents=True, exist_ok=True)
        self.log = (data / "redis.log").open("w")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def _local(self, arg: str, before: str, data: Path, primary_port: int | None) -> str:
        if arg == "/data":
            return str(data)
        if before == "--port":
            return str(self.port)
        if before == PRIMARY_HOST:  # --replicaof <host> <port>
            return str(primary_port)
        return "127.0.0.1" if arg == PRIMARY_HOST else arg

    def probe(self, env: dict[str, str] | None = None) -> bool:
        """The rendered readiness probe (exec), with this process's port."""
        (sh, flag, script) = self.container["readinessProbe"]["exec"]["command"]
        script = script.replace("-p 6379", f"-p {self.port}")
        run = subprocess.run([sh, flag, script], env=env or self.env, capture_output=True, timeout=10)
        return run.returncode == 0

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.probe():
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            assert time.monotonic() < deadline, f"not ready: {Path(self.log.name).read_text()}"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM reaches redis-server itself: the shell exec'd it
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
