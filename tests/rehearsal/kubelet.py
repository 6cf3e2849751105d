"""What a kubelet would run for a rendered container: argv, environment, mounted files — as a local process.

Kubernetes semantics kept: ``command`` replaces the image's ENTRYPOINT and ``args`` its CMD; ``$(VAR)`` in
command, args and env values expands to earlier variables (``$$`` escapes); ``envFrom`` then ``env`` (later
wins); ``valueFrom`` reads the rendered ConfigMaps and the Secrets the operator created, or the downward API.
What a process cannot have here is mapped explicitly, never silently:
- each mountPath is a directory of the rehearsal (PVCs survive a restart, emptyDirs do not), rewritten in argv
  and env values;
- ``0.0.0.0`` (all interfaces of the pod) becomes the pod's own loopback address;
- an image is an environment of this checkout built from the requirement files its Dockerfile installs
  (``IMAGES``), or the Debian build of the upstream server at the pinned major version.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"

# Image repository (last path element) → the bin directory that plays it.
IMAGES = {
    "relearn-predictor": VENV / "platform" / "bin",
    "relearn-transformer": VENV / "platform" / "bin",
    "relearn-rollout": VENV / "platform" / "bin",
    "relearn-pipeline": VENV / "platform" / "bin",
    "relearn-drift-detector": VENV / "drift" / "bin",
    "mlflow": VENV / "platform" / "bin",  # mlflow==3.17.2, as the image tag pins
}
UPSTREAM_ENTRYPOINTS = {"redis": ["redis-server"], "postgres": ["postgres"]}


def image_name(image: str) -> str:
    """``ghcr.io/relearn/relearn-predictor:0.1.0`` → ``relearn-predictor``."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables expand, ``$$(VAR)`` stays literal."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(0)[1:]
        return env.get(match.group(2), match.group(0))

    return re.sub(r"(\$)?\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def decode_secret(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's data (base64) and stringData as text."""
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


@dataclass
class Objects:
    """The namespace's ConfigMaps and Secrets as the API server holds them."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, docs: list[dict[str, Any]], secrets: list[dict[str, Any]]) -> Objects:
        objects = cls()
        for doc in docs + secrets:
            name = doc["metadata"]["name"]
            if doc["kind"] == "ConfigMap":
                objects.config_maps[name] = dict(doc.get("data") or {})
            elif doc["kind"] == "Secret":
                objects.secrets[name] = decode_secret(doc)
        return objects

    def key(self, kind: str, ref: dict[str, Any], where: str) -> str | None:
        store = self.config_maps if kind == "configMapKeyRef" else self.secrets
        data = store.get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            # The kubelet refuses to start the container (CreateContainerConfigError).
            raise LookupError(f"{where}: {kind} {ref['name']}/{ref['key']} does not exist")
        return data[ref["key"]]


def container_env(container: dict[str, Any], pod: dict[str, Any], objects: Objects) -> dict[str, str]:
    """The container's environment, as the kubelet computes it."""
    where = f"{pod['name']}/{container['name']}"
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = objects.config_maps.get(source["configMapRef"]["name"])
        else:
            data = objects.secrets.get(source["secretRef"]["name"])
        if data is None:
            raise LookupError(f"{where}: envFrom {source} does not exist")
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        ref = var.get("valueFrom", {})
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            value = {"metadata.namespace": pod["namespace"], "metadata.name": pod["name"]}.get(path)
            value = pod["ip"] if path == "status.podIP" else value
        else:
            (kind,) = ref.keys()
            value = objects.key(kind, ref[kind], where)
        if value is not None:
            env[var["name"]] = value
    return env


@dataclass
class Process:
    """One container as a local process: what the rehearsal starts."""

    pod: str
    container: str
    argv: list[str]
    env: dict[str, str]
    ip: str
    ports: dict[str, int]
    readiness: dict[str, Any] | None
    labels: dict[str, str]
    user: str | None = None


def volumes(pod_spec: dict[str, Any], pod_dir: Path, pvc_dir: Path, objects: Objects) -> dict[str, Path]:
    """Volume name → its directory; ConfigMap and Secret volumes get their files written."""
    out: dict[str, Path] = {}
    for volume in pod_spec.get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            out[name] = pvc_dir / volume["persistentVolumeClaim"]["claimName"]
        else:
            out[name] = pod_dir / "volumes" / name
        out[name].mkdir(parents=True, exist_ok=True)
        source = volume.get("configMap") or volume.get("secret")
        if source:
            store = objects.config_maps if "configMap" in volume else objects.secrets
            data = store[source.get("name") or source.get("secretName")]
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (out[name] / item["path"]).write_text(data[item["key"]])
    return out


def _rewrite(text: str, mounts: dict[str, Path], ip: str) -> str:
    """Mount paths → their directories (one pass: a directory under /tmp is not rewritten again)."""
    if mounts:
        names = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
        text = re.sub(rf"(?<![\w/.-])({names})(?=/|$|[\s,:;\"'])", lambda m: str(mounts[m.group(1)]), text)
    return text.replace("0.0.0.0", ip)


def process(
    pod: dict[str, Any], container: dict[str, Any], objects: Objects, pod_dir: Path, pvc_dir: Path
) -> Process:
    """The process a kubelet would start for ``container`` of ``pod`` (name, namespace, ip, spec, labels)."""
    env = container_env(container, pod, objects)
    by_volume = volumes(pod["spec"], pod_dir, pvc_dir, objects)
    mounts = {
        m["mountPath"]: by_volume[m["name"]] / m.get("subPath", "")
        for m in container.get("volumeMounts") or []
    }
    image = image_name(container["image"])
    command = container.get("command")
    args = container.get("args") or []
    if image in UPSTREAM_ENTRYPOINTS:
        command = command or UPSTREAM_ENTRYPOINTS[image]
    argv = [_rewrite(expand(a, env), mounts, pod["ip"]) for a in [*(command or []), *args]]
    env = {k: _rewrite(v, mounts, pod["ip"]) for k, v in env.items()}
    bin_dir = IMAGES.get(image)
    path = f"{bin_dir}:{os.environ['PATH']}" if bin_dir else os.environ["PATH"]
    if bin_dir and argv and not os.path.isabs(argv[0]):
        argv[0] = shutil.which(argv[0], path=path) or argv[0]
    home = pod_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = {"PATH": path, "HOME": str(home), "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    ports = {
        str(p.get("name") or p["containerPort"]): int(p["containerPort"])
        for p in container.get("ports") or []
    }
    return Process(
        pod=pod["name"],
        container=container["name"],
        argv=argv,
        env={**base, **env},
        ip=pod["ip"],
        ports=ports,
        readiness=container.get("readinessProbe"),
        labels=pod["labels"],
    )
