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


def scrape_configs(cluster: Cluster, interval: str = "1s") -> list[dict[str, Any]]:
    """One job per ServiceMonitor endpoint, with the targets the operator's Endpoints discovery would find."""
    jobs = []
    for monitor in selected(cluster.docs, "ServiceMonitor"):
        spec = monitor["spec"]
        for i, endpoint in enumerate(spec["endpoints"]):
            targets = []
            for service in (d for d in cluster.docs if d["kind"] == "Service"):
                labels = service["metadata"].get("labels") or {}
                if not spec["selector"]["matchLabels"].items() <= labels.items():
                    continue
                ports = {p["name"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
                if endpoint["port"] not in ports:
                    continue
                for pod in cluster.selected(service["spec"].get("selector") or {}):
                    target = ports[endpoint["port"]]
                    port = pod.proc.ports.get(target) if isinstance(target, str) else int(target)
                    extra = {
                        _sanitize(k): pod.proc.labels[k]
                        for k in spec.get("podTargetLabels", [])
                        if k in pod.proc.labels
                    }
                    name = service["metadata"]["name"]
                    labels = {"namespace": cluster.namespace, "service": name, "job": name, "pod": pod.name}
                    targets.append({"targets": [f"{pod.proc.ip}:{port}"], "labels": {**labels, **extra}})
            jobs.append({
                "job_name": f"serviceMonitor/{cluster.namespace}/{monitor['metadata']['name']}/{i}",
                "scrape_interval": interval,
                "metrics_path": endpoint.get("path", "/metrics"),
                "static_configs": targets,
            })  # fmt: skip
    return jobs


class Prometheus:
    """Debian's server on its own pod address, behind the ``prometheus-operated.monitoring`` Service."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster, self.root = cluster, root
        self.ip = cluster.net.pod_ip()
        self.url = f"http://{self.ip}:9090"
        self.process: subprocess.Popen | None = None

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
            "scrape_configs": scrape_configs(self.cluster),
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
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
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
