"""Helpers for the serving tests: free ports, server subprocesses on loopback, a CloudEvents test sink.

Also the production stores, real servers from the Debian packages on loopback: ``redis-server`` (Feast's
online store) and PostgreSQL (MLflow's backend store), each on a free port in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from relearn.demo.stack import free_port

PYTHON = sys.executable


@dataclass
class Server:
    """A predictor or transformer subprocess bound to 127.0.0.1."""

    module: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Server:
        cmd = [PYTHON, "-m", self.module, "--host", "127.0.0.1", "--http-port", str(self.http_port)]
        cmd += ["--grpc-port", str(self.grpc_port), *self.args]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 90.0) -> Server:
        def ready() -> bool:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200

        wait_until(self.module, ready, self.process, self.log_path, timeout, errors=(httpx.HTTPError,))
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self._log.close()


def wait_until(
    name: str,
    ready: Callable[[], bool],
    process: subprocess.Popen,
    log_path: Path,
    timeout: float,
    errors: tuple[type[Exception], ...] = (),
) -> None:
    """Poll ``ready()`` (``errors`` count as not yet) until it holds; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_path.read_text()[-3000:]}")
        try:
            if ready():
                return
        except errors:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{name} not ready after {timeout}s: {log_path.read_text()[-3000:]}")


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a child with ``sig``, and SIGKILL it if it has not exited 10 s later."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class EventSink:
    """A real HTTP server on loopback that keeps every event (binary-mode headers + body), like the drift
    detector: a POST in any CloudEvents content mode is split as the detector splits it; ``modes`` holds
    the content type of each POST. ``delay``: seconds before each POST is taken (a slow sink);
    ``fail_first``: that many POSTs are answered 503 and not kept (a sink that is down, then back)."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        from relearn.monitoring.payloads import http_events

        self.events: list[tuple[dict[str, str], bytes]] = []
        self.modes: list[str] = []
        self.failed = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                time.sleep(delay)  # a slow sink: the logger's queue backs up
                with sink.lock:
                    if sink.failed < fail_first:
                        sink.failed += 1
                        self.send_response(503)
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                    sink.modes.append(headers.get("content-type", ""))
                    sink.events.extend(http_events(headers.get("content-type", ""), headers, body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        """Events once ``predicate(events)`` holds (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.events)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        raise TimeoutError(f"sink got {len(self.events)} events")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StoreServer:
    """A store server (Redis or PostgreSQL) on a free loopback port, its files in a temporary directory.

    Subclasses give the command (:meth:`command`) and the readiness check (:meth:`ping`). As a context
    manager it is started on entry and stopped, its directory removed, on exit.
    """

    name = "store"
    stop_signal = signal.SIGTERM

    def __init__(self, user: str | None = None) -> None:
        self.port = free_port()
        self.user, self.group = user, None
        # A server that drops to another user needs a directory it can reach: /tmp, not a private TMPDIR.
        parent = "/tmp" if user is not None else None
        self.directory = Path(tempfile.mkdtemp(prefix=f"relearn-{self.name}-", dir=parent))
        if user is not None:
            account = pwd.getpwnam(user)
            self.group = account.pw_gid
            os.chown(self.directory, account.pw_uid, account.pw_gid)  # initdb wants to own its files
        self.log_path = self.directory / "server.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> StoreServer:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, user=self.user, group=self.group
            )
        wait_until(self.name, self.ping, self.process, self.log_path, timeout, errors=(Exception,))
        return self

    def stop(self) -> None:
        stop_process(self.process, self.stop_signal)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> StoreServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(StoreServer):
    """``redis-server``; without persistence unless ``durable`` (Feast's online store is rebuilt anyway)."""

    name = "redis"

    def __init__(self, durable: bool = False) -> None:
        super().__init__()
        self.durable = durable  # an append-only file, as the chart runs the streaming state's Redis

    def command(self) -> list[str]:
        aof = ("--appendonly", "yes", "--appendfsync", "everysec") if self.durable else ("--appendonly", "no")
        return [
            shutil.which("redis-server") or "redis-server",
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--save", "", *aof),
        ]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):  # -> redis.Redis; lazy: conftest.py loads this in the drift env too
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def ping(self) -> bool:
        return bool(self.client().ping())

    def kill(self) -> None:
        """kill -9 the server (its files stay): :meth:`start` brings it back on the same port and data."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def connection(self, db: int = 0) -> str:
        """The connection string Feast's Redis online store takes (``RELEARN_FEAST_REDIS_CONNECTION``)."""
        return f"127.0.0.1:{self.port},db={db}"


def postgres_binary(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which(name):
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


class PostgresServer(StoreServer):
    """A throwaway PostgreSQL cluster (initdb, trust auth on loopback, no fsync: test data only).

    PostgreSQL refuses to run as root: as root, it runs as the Debian package's ``postgres`` user.
    SIGINT is its fast shutdown (open sessions are ended).
    """

    name = "postgres"
    stop_signal = signal.SIGINT
    superuser = "relearn"

    def __init__(self) -> None:
        super().__init__(user="postgres" if os.geteuid() == 0 else None)
        self.data = self.directory / "data"

    def command(self) -> list[str]:
        return [
            postgres_binary("postgres") or "postgres",
            *("-D", str(self.data), "-p", str(self.port), "-k", str(self.directory)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"),
        ]

    def start(self, timeout: float = 60.0) -> PostgresServer:
        initdb = [postgres_binary("initdb") or "initdb", "-D", str(self.data), "-U", self.superuser]
        initdb += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            initdb, capture_output=True, text=True, timeout=120, user=self.user, group=self.group
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        super().start(timeout)
        return self

    def connect(self, database: str = "postgres"):  # -> psycopg2 connection; lazy, as redis above
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname=database, connect_timeout=5
        )

    def ping(self) -> bool:
        self.connect().close()
        return True

    def create_database(self, name: str) -> str:
        """Create an empty database; return its SQLAlchemy URI for MLflow (psycopg2: SQLAlchemy 2.1 defaults
        ``postgresql://`` to psycopg 3, so the driver is named)."""
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql+psycopg2://{self.superuser}@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[tuple]:
        """Rows of one read-only query."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            conn.close()
