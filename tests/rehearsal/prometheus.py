"""A Prometheus configured as the Prometheus Operator would configure kube-prometheus-stack's.

The operator selects ServiceMonitors and PrometheusRules by labels (kube-prometheus-stack's defaults:
``release: <its release>``); a ServiceMonitor's endpoints are the ready pods behind the Services it
selects, scraped at the pod address and the port the endpoint names, with ``namespace``, ``service``,
``pod``, ``job`` and the ``podTargetLabels`` (names sanitised, ``relearn.io/role`` → ``relearn_io_role``)
as target labels. The real server is Debian's ``prometheus``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from rehearsal.cluster import Cluster

# kube-prometheus-stack: serviceMonitorSelector / ruleSelector match the release label of its own release.
SELECTOR = {"release": "kube-prometheus-stack"}


def _sanitize(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def selected(
    docs: list[dict[str, Any]], kind: str, selector: dict[str, str] = SELECTOR
) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == kind and selector.items() <= (d["metadata"].get("labels") or {}).items()
    ]


def targets(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    """ "<job name>|<metrics path>" → the targets the operator's Endpoints discovery finds now (revisions come
    and go)."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for monitor in selected(cluster.docs, "ServiceMonitor"):
        spec = monitor["spec"]
        for i, endpoint in enumerate(spec["endpoints"]):
            name = f"serviceMonitor/{cluster.namespace}/{monitor['metadata']['name']}/{i}"
            job = f"{name}|{endpoint.get('path', '/metrics')}"
            found = jobs[job] = []
            for service in (d for d in cluster.docs if d["kind"] == "Service"):
                labels = service["metadata"].get("labels") or {}
                ports = {p["name"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
                selects = spec["selector"]["matchLabels"].items() <= labels.items()
                if not selects or endpoint["port"] not in ports:
                    continue
                name, target = service["metadata"]["name"], ports[endpoint["port"]]
                for pod in cluster.selected(service["spec"].get("selector") or {}):
                    port = pod.proc.ports.get(target) if isinstance(target, str) else int(target)
                    extra = {
                        _sanitize(k): pod.proc.labels[k]
                        for k in spec.get("podTargetLabels", [])
                        if k in pod.proc.labels
                    }
                    meta = {"namespace": cluster.namespace, "service": name, "job": name, "pod": pod.name}
                    found.append({"targets": [f"{pod.proc.ip}:{port}"], "labels": {**meta, **extra}})
    return jobs


def scrape_configs(cluster: Cluster, root: Path, interval: str = "1s") -> list[dict[str, Any]]:
    """One job per ServiceMonitor endpoint, its targets in a file the refresher keeps current (file_sd)."""
    return [
        {
            "job_name": job.split("|")[0],
            "scrape_interval": interval,
            "metrics_path": job.split("|")[1],
            "file_sd_configs": [{"files": [str(root / f"targets-{n}.json")], "refresh_interval": "1s"}],
        }
        for n, job in enumerate(targets(cluster))
    ]


class Prometheus:
    """Debian's server on its own pod address, behind the ``prometheus-operated.monitoring`` Service."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster, self.root = cluster, root
        self.ip = cluster.net.pod_ip()
        self.url = f"http://{self.ip}:9090"
        self.process: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.refresher = threading.Thread(target=self._refresh_loop, daemon=True)

    def _refresh(self) -> None:
        for n, found in enumerate(targets(self.cluster).values()):
            path = self.root / f"targets-{n}.json"
            (self.root / f".targets-{n}.json").write_text(json.dumps(found))
            (self.root / f".targets-{n}.json").replace(path)  # atomic: Prometheus never reads half a file

    def _refresh_loop(self) -> None:
        while not self.stop.wait(1.0):
            self._refresh()

    def start(self) -> Prometheus:
        self.root.mkdir(parents=True, exist_ok=True)
        rules = []
        for rule in selected(self.cluster.docs, "PrometheusRule"):
            path = self.root / f"{rule['metadata']['name']}.rules.yaml"
            path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
            rules.append(str(path))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rules,
            "scrape_configs": scrape_configs(self.cluster, self.root),
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._refresh()
        self.refresher.start()
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        argv = [
            binary,
            f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}",
        ]
        argv += [f"--web.listen-address={self.ip}:9090"]
        log = (self.root / "prometheus.log").open("w")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        from rehearsal.network import Endpoint

        self.cluster.net.forward(
            "prometheus-operated", 9090, [Endpoint("prometheus", self.ip, 9090, lambda: True)], "monitoring"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1)
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(
            "prometheus did not start: " + (self.root / "prometheus.log").read_text()[-2000:]
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)["data"]

    def value(self, promql: str) -> float | None:
        result = self.api("query", query=promql)["result"]
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.stop.set()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
