"""The Kubernetes API the rehearsal's controllers talk to: HTTPS, ServiceAccount tokens and the chart's RBAC.

A stand-in (tests/support/kube_api.py: custom objects validated against the upstream CRDs) served over TLS on
its own address, as ``kubernetes.default.svc``. Each ServiceAccount of the chart gets a token; a pod that
mounts its token gets ``token``, ``ca.crt`` and ``namespace`` where the kubelet projects them, so the official
client's in-cluster configuration is used unchanged. Every request is authorised against the rendered Roles
and RoleBindings (verb from the method, resource and namespace from the path): anything the Role does not
grant is a 403, and every call is recorded with its caller.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

from support.kube_api import FakeApiServer

ADMIN = "cluster-admin"  # the operator's kubectl (kubectl relearn), not bound by the chart's Roles
VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "DELETE": "delete", "PUT": "update"}


CUSTOM = {"InferenceService": "inferenceservices", "VirtualService": "virtualservices"}


def custom_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered custom objects by their API path, as the API server stores them after `helm install`."""
    return {
        "/apis/{}/namespaces/{}/{}/{}".format(
            d["apiVersion"], d["metadata"]["namespace"], CUSTOM[d["kind"]], d["metadata"]["name"]
        ): d
        for d in docs
        if d["kind"] in CUSTOM
    }


def parse(path: str) -> tuple[str, str, str | None, str | None]:
    """``/apis/<group>/<v>/namespaces/<ns>/<plural>[/<name>]`` or ``/api/v1/…`` → group, plural, ns, name."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = None
    if rest[:1] == ["namespaces"]:
        namespace, rest = rest[1], rest[2:]
    return group, rest[0], namespace, rest[1] if len(rest) > 1 else None


class Rbac:
    """The chart's Roles as bound to ServiceAccounts by its RoleBindings."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
        self.rules: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for binding in (d for d in docs if d["kind"] == "RoleBinding"):
            ns = binding["metadata"]["namespace"]
            role = roles.get((ns, binding["roleRef"]["name"]))
            for subject in binding.get("subjects") or []:
                if subject["kind"] == "ServiceAccount" and role is not None:
                    user = f"system:serviceaccount:{subject.get('namespace', ns)}:{subject['name']}"
                    self.rules.setdefault(user, []).extend((ns, r) for r in role.get("rules") or [])

    def allows(self, user: str, method: str, path: str) -> bool:
        group, resource, namespace, name = parse(path)
        verb = VERBS[method] if name or method != "GET" else "list"
        for ns, rule in self.rules.get(user, []):
            if (
                ns == namespace
                and group in rule.get("apiGroups", [])
                and resource in rule.get("resources", [])
                and verb in rule.get("verbs", [])
                and (not rule.get("resourceNames") or name in rule["resourceNames"])
            ):
                return True
        return False


class ApiServer:
    """The stand-in on ``ip``:443 with a self-signed certificate; tokens per ServiceAccount."""

    def __init__(self, docs: list[dict[str, Any]], objects: dict[str, dict[str, Any]], root: Path, ip: str):
        self.rbac = Rbac(docs)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca, key = root / "ca.crt", root / "tls.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=kubernetes",
             "-addext", f"subjectAltName=IP:{ip},DNS:kubernetes.default.svc", "-keyout", str(key),
             "-out", str(self.ca)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.tokens: dict[str, str] = {secrets.token_hex(16): ADMIN}
        self.server = FakeApiServer(
            objects, authorize=self._authorize, address=(ip, 443), tls=(str(self.ca), str(key))
        )
        self.ip = ip

    def _authorize(self, token: str | None, method: str, path: str) -> str | None:
        user = self.tokens.get(token or "")
        if user is None:
            return None
        return user if user == ADMIN or self.rbac.allows(user, method, path) else None

    def token_dir(self, namespace: str, service_account: str, where: Path) -> Path:
        """The projected volume of a pod's ServiceAccount token (token, ca.crt, namespace)."""
        token = secrets.token_hex(16)
        self.tokens[token] = f"system:serviceaccount:{namespace}:{service_account}"
        where.mkdir(parents=True, exist_ok=True)
        (where / "token").write_text(token)
        (where / "ca.crt").write_text(self.ca.read_text())
        (where / "namespace").write_text(namespace)
        return where

    def admin_kubeconfig(self) -> Path:
        """The operator's kubeconfig (what `kubectl relearn` uses)."""
        token = next(t for t, u in self.tokens.items() if u == ADMIN)
        return self.server.kubeconfig(self.root / "kubeconfig", token=token, ca=self.ca)

    def calls(self, user_prefix: str = "system:serviceaccount:") -> list[tuple[str, str, str]]:
        """(caller, method, path) of every authorised call by ServiceAccounts."""
        return [
            (r["user"], r["method"], r["path"])
            for r in self.server.requests
            if r["user"].startswith(user_prefix)
        ]

    def __enter__(self) -> ApiServer:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
