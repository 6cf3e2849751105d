"""Rendering charts/relearn offline: `helm template` per scenario, tool lookup and skip markers."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.crds import CRDS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relearn"
SHARED = ROOT.parent / "shared"
CHART_VENV = ROOT / ".venv" / "chart"
NAMESPACE = "relearn"
K8S_VERSION = "1.30.0"

SCENARIOS = {
    "default": [],
    "canary": ["-f", str(CHART / "ci" / "canary-values.yaml")],
    "shadow": ["-f", str(CHART / "ci" / "shadow-values.yaml")],
    "kubeflow": ["-f", str(CHART / "ci" / "kubeflow-values.yaml")],
    "production": ["-f", str(CHART / "ci" / "production-values.yaml")],
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
CUSTOM_GROUPS = ("serving.kserve.io/", "networking.istio.io/", "monitoring.coreos.com/", "kubeflow.org/")

try:  # jsonschema belongs in requirements/dev.txt; until then borrow it from the chart tool venv.
    import jsonschema
except ImportError:  # pragma: no cover - depends on the environment
    for site in sorted(CHART_VENV.glob("lib/python*/site-packages")):
        sys.path.append(str(site))
    try:
        import jsonschema
    except ImportError:
        jsonschema = None


def _tool(name: str, *extra: Path) -> str | None:
    for d in (ROOT / ".venv" / "tools" / "bin", CHART_VENV / "bin", *extra):
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


HELM = _tool("helm")
needs_helm = pytest.mark.skipif(HELM is None, reason="helm missing: run .ci/install-tools.sh")
needs_shared = pytest.mark.skipif(not CRDS.is_dir(), reason=f"{CRDS} missing (upstream CRDs)")
needs_jsonschema = pytest.mark.skipif(jsonschema is None, reason="jsonschema missing (requirements/dev.txt)")


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


@functools.cache
def rendered(scenario: str, *extra: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders for a scenario (cached: each scenario renders once)."""
    cmd = [HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, *SCENARIOS[scenario], *extra]
    out = _run(cmd)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def rendered_text(scenario: str) -> str:
    out = _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, *SCENARIOS[scenario]])
    assert out.returncode == 0, out.stderr
    return out.stdout


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of a workload or of each InferenceService component."""
    if doc["kind"] in WORKLOADS:
        return [(f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])]
    if doc["kind"] == "Pod":  # helm test hooks (templates/tests/)
        return [(f"Pod/{doc['metadata']['name']}", doc["spec"])]
    if doc["kind"] == "InferenceService":
        return [(f"isvc/{doc['metadata']['name']}/{c}", doc["spec"][c]) for c in ("predictor", "transformer")]
    return []


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    return doc


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def assert_valid_kubernetes(docs: dict[str, list[dict[str, Any]]], tmp_path: Path) -> list[str]:
    """``kubernetes-validate --strict`` on the built-in kinds of each named render (custom resources are the
    CRD tests'); returns the files it checked. Skips where the tool is missing."""
    import pytest
    import yaml

    validate = _tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate missing: run .ci/install-tools.sh")
    files = []
    for name, rendered_docs in docs.items():
        for i, d in enumerate(rendered_docs):
            if not d["apiVersion"].startswith(CUSTOM_GROUPS):
                f = tmp_path / f"{name}-{i:03d}-{d['kind']}.yaml"
                f.write_text(yaml.safe_dump(d))
                files.append(str(f))
    out = _run([validate, "--strict", "--quiet", "-k", K8S_VERSION, *files])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout and "INFO" not in out.stdout, out.stdout
    return files
