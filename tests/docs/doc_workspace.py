"""Where the documented commands run: a fresh clone after ``make train``, and what a block needs beside it.

The clone is a temporary directory with the repository's files linked in and ``.relearn/`` a copy of the
session's trained home (the state ``make train`` leaves; a copy, so the docs' registrations, rollouts and
online-state updates stay out of the other tests' way). Commands run with the README's own ports; a lock
keeps two docs runs on one machine apart, and a port another process holds fails the block with its number.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from docs.doc_blocks import ROOT, Block
from docs.doc_shell import stop_session
from relearn.demo.stack import free_port

# The README's commands hold fixed ports on every address (0.0.0.0, the servers' default), as the rehearsal's
# pods do on 127.0.1.x: one docs run at a time, and never beside a rehearsal (its lock, tests/rehearsal).
LOCKS = (Path("/tmp/relearn-docs.lock"), Path("/tmp/relearn-rehearsal.lock"))
PRELUDE = """\
source .venv/platform/bin/activate           # the README's set-up
export PATH="$PWD/.venv/tools/bin:$PATH"
export PATH="$DOCS_SHIMS:$PATH"              # the block kind's stand-ins
"""
SHIMS = {  # kind -> program -> body
    "cluster": {
        "kubectl": 'exec "$DOCS_PYTHON" "$DOCS_OFFLINE" kubectl "$@"\n',
        "helm": 'exec "$DOCS_PYTHON" "$DOCS_OFFLINE" helm "$@"\n',
    },
    "run": {"curl": f'exec {shutil.which("curl") or "/usr/bin/curl"} --fail-with-body "$@"\n'},  # 4xx fails
}


def make_recipe(target: str) -> str:
    """The command ``make <target>`` runs (its last line under ``make -n``)."""
    # --no-print-directory: under another make (CI runs `make test`) make -n ends with "Leaving directory".
    command = ["make", "--no-print-directory", "-n", target]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


class Workspace:
    """The clone the blocks run in, the environment per kind, and the services a block needs."""

    def __init__(self, tmp: Path, home: Path, blocks: list[Block]) -> None:
        self.tmp, self.clone, self.blocks = tmp, tmp / "clone", blocks
        self.clone.mkdir(parents=True)
        for entry in ROOT.iterdir():
            if entry.name not in (".relearn", ".git"):
                (self.clone / entry.name).symlink_to(entry)
        shutil.copytree(home, self.clone / ".relearn", symlinks=True)
        (tmp / "kubeconfig").write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: docs\n"
            f"clusters: [{{name: docs, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
            "contexts: [{name: docs, context: {cluster: docs, user: docs}}]\n"
            "users: [{name: docs, user: {}}]\n"
        )
        for kind, programs in SHIMS.items():
            for name, body in programs.items():
                shim = tmp / "shims" / kind / name
                shim.parent.mkdir(parents=True, exist_ok=True)
                shim.write_text(f"#!/usr/bin/env bash\n{body}")
                shim.chmod(0o755)
        for block in blocks:  # `cluster file=NAME` blocks: files other blocks of the document use
            if block.kind == "cluster" and (name := block.options.get("file")):
                (self.clone / name).write_text(block.source)
        self.champion_dir: Path | None = None

    def env(self, kind: str) -> dict[str, str]:
        """A new user's shell (no relearn/MLflow settings, no venv), plus what the stand-ins read."""
        drop = ("RELEARN_", "MLFLOW_", "VIRTUAL_ENV", "KUBECONFIG", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        tools = ROOT / ".venv" / "tools" / "bin"
        return {
            **env,
            "KUBECONFIG": str(self.tmp / "kubeconfig"),  # an API server that refuses every connection
            "DOCS_SHIMS": str(self.tmp / "shims" / kind),
            "DOCS_PYTHON": str(ROOT / ".venv" / "platform" / "bin" / "python"),
            "DOCS_OFFLINE": str(Path(__file__).with_name("offline_cluster.py")),
            "DOCS_KUBECTL": str(tools / "kubectl"),
            "DOCS_HELM": str(tools / "helm"),
            "DOCS_KUBERNETES_VALIDATE": str(ROOT / ".venv" / "chart" / "bin" / "kubernetes-validate"),
            "DOCS_STATE": str(self.tmp / "helm-releases"),
            "DOCS_KUBE_VERSION": kube_floor(),
        } | ({"RELEARN_CHECK_DEADLINE_SECONDS": "0"} if kind == "cluster" else {})  # no pods to wait for

    # ------------------------------------------------------------------------------- what blocks need
    def ports_of(self, needs: list[str]) -> list[int]:
        return [p for need in needs if need in services() for p in services()[need][1]]

    def wait_free(self, ports: list[int], where: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while busy := [p for p in ports if not bindable(p)]:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{where}: port(s) {busy} are in use by another process; the docs run the README's "
                    "commands on their default ports: stop it (make serve? make drift?) and rerun"
                )
            time.sleep(0.5)

    @contextmanager
    def needs(self, block: Block) -> Iterator[None]:
        """Start what the block needs (``needs=``); the servers are stopped again after it."""
        with ExitStack() as stack:
            for need in block.option_list("needs"):
                if need in services():
                    target, _, ready = services()[need]
                    stack.enter_context(self.server(make_recipe(target), ready))
                elif need == "version-2":
                    self.register_second_version()
                else:
                    raise AssertionError(f"{block.where}: unknown need {need!r}")
            yield

    @contextmanager
    def server(self, command: str, ready: list[str]) -> Iterator[None]:
        """``command`` in the clone, as the README runs it, until it is stopped; waited for on ``ready``."""
        log_path = self.tmp / f"{command.split()[-1]}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                ["bash", "-c", PRELUDE + command], cwd=self.clone, env=self.env("run"), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            for url in ready:
                while not _ready(f"http://127.0.0.1:{url}"):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"`{command}` not ready: {log_path.read_text()[-3000:]}")
                    time.sleep(0.3)
            yield
        finally:
            stop_session(process.pid)
            process.wait(timeout=30)

    def python(self, code: str) -> str:
        """Run Python in the clone with the platform environment (no MLflow state in the test process)."""
        done = subprocess.run(
            [str(ROOT / ".venv" / "platform" / "bin" / "python"), "-c", code],
            cwd=self.clone, env=self.env("run"), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def register_second_version(self) -> None:
        """Version 2 of the model, the champion's artifacts again (as a second `make train` would add one)."""
        self.python(
            "import mlflow\nfrom mlflow import MlflowClient\n"
            "mlflow.set_tracking_uri('sqlite:///.relearn/mlflow.db')\nc = MlflowClient()\n"
            "if not c.search_model_versions(\"name='relearn-fraud' and version_number=2\"):\n"
            "    v1 = c.get_model_version('relearn-fraud', '1')\n"
            "    c.create_model_version('relearn-fraud', v1.source, run_id=v1.run_id, tags=v1.tags)\n"
        )

    def champion_download(self) -> Path:
        """The champion downloaded as KServe's storage initializer leaves it in /mnt/models."""
        if self.champion_dir is None:
            target = self.tmp / "mnt-models"
            self.python(
                "import mlflow\nmlflow.set_tracking_uri('sqlite:///.relearn/mlflow.db')\n"
                "mlflow.artifacts.download_artifacts('models:/relearn-fraud@champion', "
                f"dst_path={str(target)!r})\n"
            )
            self.champion_dir = target
        return self.champion_dir


def kube_floor() -> str:
    """The chart's oldest Kubernetes (``kubeVersion: ">=1.30.0-0"`` → ``1.30.0``): manifests pass it."""
    chart = (ROOT / "charts" / "relearn" / "Chart.yaml").read_text()
    return re.search(r'kubeVersion:\s*"?>=\s*(\d+\.\d+\.\d+)', chart)[1]


def services() -> dict[str, tuple[str, list[int], list[str]]]:
    """What ``needs=serve|drift`` start: the make target, the ports it holds (the code's defaults, which the
    README uses) and the readiness URLs (port/path)."""
    from relearn.monitoring.settings import DriftSettings
    from relearn.serving.local import LocalStackSettings

    s, port = LocalStackSettings(), DriftSettings().port
    serve_ports = [s.transformer_http_port, s.transformer_grpc_port, s.predictor_http_port]
    serve_ports += [s.predictor_grpc_port, s.explainer_http_port, s.explainer_grpc_port]
    ready = [f"{p}/v2/health/ready" for p in (s.predictor_http_port, s.transformer_http_port)]
    ready.append(f"{s.explainer_http_port}/v2/health/ready")
    return {"serve": ("serve", serve_ports, ready), "drift": ("drift", [port], [f"{port}/ready"])}


def bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` on every address (nothing listens on it anywhere)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def machine_lock(timeout: float = 900.0) -> Iterator[None]:
    """Hold the docs' and the rehearsal's locks (see LOCKS)."""
    with ExitStack() as stack:
        for path in LOCKS:
            handle = stack.enter_context(path.open("w"))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"another run holds {path}") from None
                    time.sleep(1)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield
