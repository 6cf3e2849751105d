"""NetworkPolicy semantics (networking.k8s.io/v1), to judge a flow the rehearsal saw or a client it wires up.

What a conforming CNI enforces (kubernetes.io/docs/concepts/services-networking/network-policies/, API
reference of NetworkPolicySpec): a pod is isolated for ingress (egress) when a policy of its namespace
selects it and has Ingress (Egress) in ``policyTypes`` (absent: Ingress, plus Egress when the policy has
``egress`` rules). A flow is allowed when the destination is not isolated for ingress or one of its
selecting policies has an ingress rule admitting the source and the port, and the same for the source's
egress. Within a peer, ``podSelector`` without ``namespaceSelector`` means the policy's namespace; both
together mean pods matching the first in namespaces matching the second. Empty ``from``/``to``/``ports``
match everything; a port without ``port`` matches every port of its protocol (TCP by default).
Namespaces carry only the ``kubernetes.io/metadata.name`` label here (what the chart's peers select on).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    """One end of a flow: a pod's namespace, labels and, for ipBlock peers, its address."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels (``{}`` selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer(spec: Mapping[str, Any], policy_namespace: str, other: Pod) -> bool:
    if "ipBlock" in spec:
        if other.ip is None:
            return False
        address = ipaddress.ip_address(other.ip)
        block = spec["ipBlock"]
        excluded = any(address in ipaddress.ip_network(c) for c in block.get("except") or [])
        return address in ipaddress.ip_network(block["cidr"]) and not excluded
    if "namespaceSelector" in spec:
        namespace_ok = selects(spec["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and selects(spec.get("podSelector"), other.labels)


def _port(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for spec in ports:
        if spec.get("protocol", "TCP") != protocol:
            continue
        if "port" not in spec:
            return True
        if isinstance(spec["port"], str):
            raise NotImplementedError(f"named port {spec['port']!r} in a policy: resolve it on the pod")
        if spec["port"] <= port <= spec.get("endPort", spec["port"]):
            return True
    return False


def _types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _side(
    policies: list[Mapping[str, Any]], pod: Pod, other: Pod, port: int, protocol: str, kind: str
) -> bool:
    """Whether ``pod``'s policies of ``kind`` (Ingress: other → pod; Egress: pod → other) allow the flow."""
    rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    isolating = [
        p
        for p in policies
        if p["metadata"].get("namespace") == pod.namespace
        and kind in _types(p)
        and selects(p["spec"].get("podSelector"), pod.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key) or []
            matched = not peers or any(_peer(s, pod.namespace, other) for s in peers)
            if matched and _port(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(docs: list[Mapping[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether the rendered NetworkPolicies let ``src`` open ``port`` on ``dst``."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    return _side(policies, dst, src, port, protocol, "Ingress") and _side(
        policies, src, dst, port, protocol, "Egress"
    )
