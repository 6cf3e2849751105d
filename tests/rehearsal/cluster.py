"""A rendered chart run as the cluster would run it: pods as processes, Services on loopback, restarts.

``Cluster(docs, secrets)`` takes ``helm template`` output and the Secrets an operator creates beforehand. Each
Deployment or StatefulSet becomes one pod, each InferenceService its KServe pods (``kserve``); every Service
forwards to the ready pods it selects (``network``). A container that exits is restarted with a back-off, as
the kubelet does (CrashLoopBackOff), and counted. Upstream images run their Debian servers: PostgreSQL is
initialised from ``POSTGRES_*`` as its image's entrypoint does, Redis listens on the pod's address.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehearsal import kserve, netpol
from rehearsal.kubelet import Objects, Process, image_name, process
from rehearsal.network import Endpoint, Network, socket_owner

WORKLOADS = ("Deployment", "StatefulSet")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else name


@dataclass
class Pod:
    """A running pod: its process, log, restarts."""

    name: str
    proc: Process
    log: Path
    popen: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    _ready: tuple[float, bool] = (0.0, False)
    _failures: int = 0
    _probed: Any = None  # the container (Popen) the readiness state belongs to: a restart starts unready
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ready(self) -> bool:
        """The readinessProbe (cached 1 s); no probe: ready while running. As the kubelet's: a ready pod turns
        unready after failureThreshold (default 3) failed probes in a row, not after one slow answer."""
        now = time.monotonic()
        if now - self._ready[0] < 1.0:
            return self._ready[1]
        if self.popen is None or self.popen.poll() is not None or self._probed is not self.popen:
            self._ready, self._failures, self._probed = (now, False), 0, self.popen
            if self.popen is None or self.popen.poll() is not None:
                return False
        ok = probe(self.proc)
        self._failures = 0 if ok else self._failures + 1
        threshold = int((self.proc.readiness or {}).get("failureThreshold", 3))
        ready = ok or (self._ready[1] and self._failures < threshold)
        self._ready = (now, ready)
        return ready


def _port(proc: Process, port: Any) -> int:
    return proc.ports[port] if isinstance(port, str) else int(port)


def probe(proc: Process) -> bool:
    """httpGet and tcpSocket as the kubelet runs them. exec probes talk to the pod's localhost, which here is
    the machine's: ``redis-cli`` ones run as rendered with ``-h <pod address>`` (a loading Redis answers
    LOADING, not PONG: not ready), others (``pg_isready``) become a TCP check of the first port."""
    spec = proc.readiness
    if spec is None:
        return True
    try:
        command = (spec.get("exec") or {}).get("command") or []
        if any("redis-cli" in c for c in command):
            command = [c.replace("redis-cli", f"redis-cli -h {proc.ip}") for c in command]
            return subprocess.run(command, env=proc.env, capture_output=True, timeout=5).returncode == 0
        if "httpGet" in spec:
            get = spec["httpGet"]
            url = f"http://{proc.ip}:{_port(proc, get['port'])}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return 200 <= answer.status < 400
        port = (
            _port(proc, spec["tcpSocket"]["port"]) if "tcpSocket" in spec else next(iter(proc.ports.values()))
        )
        with socket.create_connection((proc.ip, port), timeout=2):
            return True
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False


class Cluster:
    """The rehearsal: start with :meth:`start`, stop with :meth:`close` (processes, DNS, forwarders)."""

    def __init__(
        self,
        docs: list[dict[str, Any]],
        secrets: list[dict[str, Any]],
        root: Path,
        namespace: str,
        api: Any = None,
    ):
        """``api``: a rehearsal.apiserver.ApiServer holding the custom objects (None: no Kubernetes API)."""
        self.docs, self.root, self.namespace, self.api = docs, root, namespace, api
        self.objects = Objects.of(docs, secrets)
        self.net = Network(namespace)
        self.pods: dict[str, Pod] = {}
        self.revisions: dict[str, Any] = {}  # InferenceService → its predictor revisions (rehearsal.knative)
        self.stopping = threading.Event()
        self.supervisor = threading.Thread(target=self._supervise, daemon=True)
        # Processes the test runs as pods elsewhere (a KFP run pod): session id → (name, namespace, labels).
        self.guests: dict[int, tuple[str, str, dict[str, str]]] = {}
        self.net.audit = self.client_of

    def client_of(self, peer: tuple[str, int], service: tuple[str, int]) -> str | None:
        """The pod whose process holds the client end of a connection to a Service (each pod's processes
        share one session: the kubelet's stand-in starts every pod as a session leader)."""
        pid = socket_owner(peer, service)
        try:
            sid = os.getsid(pid) if pid is not None else None
        except ProcessLookupError:  # exited meanwhile
            return None
        for pod in list(self.pods.values()):
            if pod.popen is not None and pod.popen.pid == sid:
                return pod.name
        return self.guests[sid][0] if sid in self.guests else None

    def identity(self, name: str) -> netpol.Pod:
        """A pod (or a guest) as the NetworkPolicies see it: namespace, labels, address."""
        if name in self.pods:
            proc = self.pods[name].proc
            return netpol.Pod(self.namespace, proc.labels, proc.ip)
        (namespace, labels) = next((g[1], g[2]) for g in self.guests.values() if g[0] == name)
        return netpol.Pod(namespace, labels)

    # ------------------------------------------------------------------------------------------- build
    def _pod(self, name: str, labels: dict[str, str], spec: dict[str, Any]) -> list[Pod]:
        ip = self.net.pod_ip()
        pod = {"name": name, "namespace": self.namespace, "ip": ip, "labels": labels, "spec": spec}
        made = []
        for container in spec["containers"]:
            proc = process(pod, container, self.objects, self.root / "pods" / name, self.root / "pvc")
            if self.api is not None:
                self._api_access(proc, spec, self.root / "pods" / name / "serviceaccount")
            key = name if len(spec["containers"]) == 1 else f"{name}/{container['name']}"
            made.append(
                Pod(
                    key,
                    self._entrypoint(proc, container),
                    self.root / "logs" / f"{key.replace('/', '_')}.log",
                )
            )
        return made

    def _api_access(self, proc: Process, spec: dict[str, Any], where: Path) -> None:
        """The kubelet's KUBERNETES_SERVICE_* env in every pod, and the ServiceAccount token where it projects
        it (a private bind mount: the official client reads that fixed path)."""
        proc.env.update(KUBERNETES_SERVICE_HOST=self.api.ip, KUBERNETES_SERVICE_PORT="443")
        if spec.get("automountServiceAccountToken") and spec.get("serviceAccountName"):
            token = self.api.token_dir(self.namespace, spec["serviceAccountName"], where)
            SA_DIR.mkdir(parents=True, exist_ok=True)
            mount = f'mount --bind "$0" {SA_DIR} && exec "$@"'
            proc.argv = ["unshare", "--mount", "sh", "-c", mount, str(token), *proc.argv]

    def _entrypoint(self, proc: Process, container: dict[str, Any]) -> Process:
        """What the upstream images' entrypoints add: initdb for PostgreSQL, the bind address for Redis."""
        image = image_name(container["image"])
        if image == "redis":
            # The rendered args as they are (the state's AOF with its appendfsync, the replicas'
            # --replicaof); a rendered command (auth: sh -c '... exec redis-server - "$@"') passes them on.
            if proc.argv[0] == "redis-server":
                proc.argv[0] = shutil.which("redis-server") or "redis-server"
            proc.argv += ["--bind", proc.ip, "--protected-mode", "no"]
        elif image == "postgres":
            proc.user = "postgres" if os.geteuid() == 0 else None
            data = Path(proc.env["PGDATA"])
            socket_dir = Path(proc.env["HOME"]).parent / "run"
            socket_dir.mkdir(parents=True, exist_ok=True)
            if proc.user:
                os.chown(socket_dir, pwd.getpwnam(proc.user).pw_uid, -1)
            proc.argv = [_postgres_bin("postgres"), "-D", str(data), "-c", f"listen_addresses={proc.ip}"]
            proc.argv += ["-k", str(socket_dir), "-c", "fsync=off"]
            self._initdb(proc, data)
        return proc

    def _initdb(self, proc: Process, data: Path) -> None:
        """docker-entrypoint.sh: a cluster owned by POSTGRES_USER (password auth over TCP), POSTGRES_DB."""
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        if proc.user:
            account = pwd.getpwnam(proc.user)
            for path in (data, *data.parents):
                if path == self.root.parent:
                    break
                os.chown(path, account.pw_uid, account.pw_gid)
        pwfile = data.parent / "pwfile"
        pwfile.write_text(proc.env["POSTGRES_PASSWORD"])
        if proc.user:
            os.chown(pwfile, pwd.getpwnam(proc.user).pw_uid, -1)
        initdb = [_postgres_bin("initdb"), "-D", str(data), "-U", proc.env["POSTGRES_USER"]]
        initdb += [f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync"]
        done = subprocess.run(initdb, capture_output=True, text=True, user=proc.user, timeout=120)
        assert done.returncode == 0, done.stderr
        pwfile.unlink()
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 127.0.0.0/8 scram-sha-256\n")
        # CREATE DATABASE POSTGRES_DB, as the entrypoint does, with a single-user server.
        single = [_postgres_bin("postgres"), "--single", "-D", str(data), "postgres"]
        done = subprocess.run(
            single, input=f'CREATE DATABASE "{proc.env["POSTGRES_DB"]}";\n', capture_output=True, text=True,
            user=proc.user, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def build(self) -> None:
        """Pods for every workload and InferenceService; Services and their forwarders."""
        for doc in self.docs:
            meta = doc["metadata"]
            if doc["kind"] in WORKLOADS:
                template = doc["spec"]["template"]
                spec = dict(template["spec"])
                # A StatefulSet's volumeClaimTemplates become the PVCs <template>-<pod>.
                claims = [
                    {
                        "name": t["metadata"]["name"],
                        "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{meta['name']}-0"},
                    }
                    for t in doc["spec"].get("volumeClaimTemplates") or []
                ]
                spec["volumes"] = [*(spec.get("volumes") or []), *claims]
                for pod in self._pod(f"{meta['name']}-0", template["metadata"].get("labels") or {}, spec):
                    self.pods[pod.name] = pod
            elif doc["kind"] == "InferenceService":
                made = kserve.pods(doc)
                by_name = {}
                for spec in made:
                    (pod,) = self._pod(spec["name"], spec["labels"], spec["spec"])
                    self.pods[pod.name] = by_name[spec["name"]] = pod
                routed = self._revisions(doc, made)
                for service, spec in kserve.services(doc, made).items():
                    if service == routed:
                        continue
                    pod = by_name[spec["name"]]
                    port = next(iter(pod.proc.ports.values()), 8080)
                    self.net.forward(service, 80, [Endpoint(pod.name, pod.proc.ip, port, pod.ready)])
        for doc in self.docs:
            if doc["kind"] == "Service":
                self._service(doc)

    def _revisions(self, isvc: dict[str, Any], made: list[dict[str, Any]]) -> str | None:
        """With an API server, a Serverless predictor's Service is Knative's route over its revisions."""
        if self.api is None or kserve.mode(isvc) != "Serverless":
            return None
        from rehearsal.knative import PredictorRevisions

        meta = isvc["metadata"]
        path = (
            f"/apis/serving.kserve.io/v1beta1/namespaces/{meta['namespace']}/inferenceservices/{meta['name']}"
        )
        revisions = self.revisions[meta["name"]] = PredictorRevisions(
            self, self.api.server.objects, path, self.root / "routes" / meta["name"]
        )
        revisions.state_path.parent.mkdir(parents=True, exist_ok=True)
        (predictor,) = [p for p in made if p["component"] == "predictor"]
        revisions.adopt(predictor["name"])
        return f"{meta['name']}-predictor"

    def add_pod(self, spec: dict[str, Any]) -> Pod:
        """A pod made after the start (a new revision): built and launched."""
        (pod,) = self._pod(spec["name"], spec["labels"], spec["spec"])
        self.pods[pod.name] = pod
        self._launch(pod)
        return pod

    def selected(self, selector: dict[str, str]) -> list[Pod]:
        return [p for p in self.pods.values() if selector and selector.items() <= p.proc.labels.items()]

    def _service(self, doc: dict[str, Any]) -> None:
        name, spec = doc["metadata"]["name"], doc["spec"]
        pods = self.selected(spec.get("selector") or {})
        if spec.get("clusterIP") == "None":  # headless: DNS names the (first) pod
            if pods:
                self.net.service(name, ip=pods[0].proc.ip)
            return
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            endpoints = [
                Endpoint(
                    p.name,
                    p.proc.ip,
                    p.proc.ports[target] if isinstance(target, str) else int(target),
                    p.ready,
                )
                for p in pods
                if not isinstance(target, str) or target in p.proc.ports
            ]
            self.net.forward(name, int(port["port"]), endpoints)

    # ------------------------------------------------------------------------------------------- run
    def _launch(self, pod: Pod) -> None:
        pod.log.parent.mkdir(parents=True, exist_ok=True)
        with pod.log.open("a") as log:
            pod.popen = subprocess.Popen(
                pod.proc.argv, env=pod.proc.env, stdout=log, stderr=subprocess.STDOUT, user=pod.proc.user,
                cwd=pod.proc.env["HOME"], start_new_session=True,
            )  # fmt: skip
        pod.started = time.monotonic()

    def start(self) -> Cluster:
        self.build()
        for pod in self.pods.values():
            self._launch(pod)
        for name, revisions in self.revisions.items():
            revisions.serve(self.net.service(f"{name}-predictor"))
        self.supervisor.start()
        return self

    def _supervise(self) -> None:
        """Restart exited containers with the kubelet's back-off (10 s doubling, capped here at 40 s)."""
        while not self.stopping.wait(0.5):
            for pod in list(self.pods.values()):
                with pod.lock:
                    if pod.popen is None or pod.popen.poll() is None:
                        continue
                    backoff = min(40.0, 10.0 * 2**pod.restarts)
                    if time.monotonic() - pod.started >= backoff and not self.stopping.is_set():
                        pod.restarts += 1
                        self._launch(pod)

    def wait_ready(self, names: list[str], timeout: float) -> None:
        """Until every named pod is ready; the failure names the pods and shows their logs' tails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.pods[n].ready() for n in names):
                return
            time.sleep(1)
        raise AssertionError(
            "not ready: "
            + "; ".join(
                f"{n} (restarts {self.pods[n].restarts}): {self.tail(n)}"
                for n in names
                if not self.pods[n].ready()
            )
        )

    def tail(self, name: str, lines: int = 15) -> str:
        log = self.pods[name].log
        return (
            "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"
        )

    def close(self) -> None:
        self.stopping.set()
        for revisions in self.revisions.values():
            revisions.close()
        for pod in self.pods.values():
            with pod.lock:
                if pod.popen is not None and pod.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pod.popen.pid, 15)
        for pod in self.pods.values():
            if pod.popen is not None:
                try:
                    pod.popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(pod.popen.pid, 9)
        self.net.close()
