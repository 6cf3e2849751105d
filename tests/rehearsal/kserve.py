"""What KServe's controller makes of a rendered InferenceService: its pods' containers and its Services.

Taken from KServe's sources (kserve/kserve, 0.15–0.16; file and function named at each rule):
- admission: RawDeployment scales with an HPA on cpu or memory only, Serverless with Knative's KPA on
  concurrency or rps (``validateScalingHPACompExtension`` / ``validateScalingKPACompExtension`` in
  pkg/apis/serving/v1beta1/inference_service_validation.go);
- a custom transformer's args get ``--model_name <isvc>``, ``--predictor_host <isvc>-predictor.<ns>``,
  ``--http_port 8080`` and ``--workers <containerConcurrency>`` unless an arg already starts with the flag
  (``CustomTransformer.GetContainer``, pkg/apis/serving/v1beta1/transformer_custom.go; ``IncludesArg``);
- every component container gets ``INFERENCE_SERVICE_NAME`` (components/predictor.go, transformer.go);
  Knative adds ``PORT``, ``K_SERVICE``, ``K_CONFIGURATION``, ``K_REVISION`` in Serverless mode;
- Services ``<isvc>-predictor`` / ``<isvc>-transformer`` on port 80 to the container's first port
  (reconcilers/service/service_reconciler.go; Knative routes the same way), and the InferenceService's own
  host to the transformer when there is one.
"""

from __future__ import annotations

import copy
from typing import Any

SERVERLESS_METRICS = {"concurrency", "rps"}
RAW_METRICS = {"cpu", "memory"}


class AdmissionError(ValueError):
    """KServe's validating webhook would reject the InferenceService."""


def mode(isvc: dict[str, Any]) -> str:
    return (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode", "Serverless")


def admit(isvc: dict[str, Any]) -> None:
    """The webhook's scaling checks for each component."""
    raw = mode(isvc) in ("RawDeployment", "Standard")
    for component in ("predictor", "transformer"):
        spec = isvc["spec"].get(component)
        if not spec:
            continue
        metric = spec.get("scaleMetric", "cpu" if raw else "concurrency")
        allowed = RAW_METRICS if raw else SERVERLESS_METRICS
        if metric not in allowed:
            raise AdmissionError(
                f"{isvc['metadata']['name']}.{component}: [{metric}] is not a supported metric"
            )
        target = spec.get("scaleTarget")
        if raw and metric == "cpu" and target is not None and not 1 <= target <= 100:
            raise AdmissionError("the target utilization percentage should be a [1-100] integer")


def _includes_arg(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag) for a in args)


def transformer_args(isvc: dict[str, Any], args: list[str]) -> list[str]:
    """``CustomTransformer.GetContainer``'s appended args."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    out = list(args)
    spec = isvc["spec"]["transformer"]
    for flag, value in (
        ("--model_name", name),
        ("--predictor_host", f"{name}-predictor.{namespace}"),
        ("--http_port", "8080"),
    ):
        if not _includes_arg(out, flag):
            out += [flag, value]
    if not _includes_arg(out, "--workers") and spec.get("containerConcurrency") is not None:
        out += ["--workers", str(spec["containerConcurrency"])]
    return out


def pods(isvc: dict[str, Any], revision: int = 1) -> list[dict[str, Any]]:
    """The component pods (one replica each): name, labels and a pod spec holding the final container."""
    admit(isvc)
    name = isvc["metadata"]["name"]
    serverless = mode(isvc) == "Serverless"
    out = []
    for component in ("predictor", "transformer"):
        spec = isvc["spec"].get(component)
        if not spec:
            continue
        container = copy.deepcopy(spec["containers"][0])
        if component == "transformer":
            container["args"] = transformer_args(isvc, container.get("args") or [])
        env = container.setdefault("env", [])
        env.append({"name": "INFERENCE_SERVICE_NAME", "value": name})
        service = f"{name}-{component}"
        if serverless:
            port = (container.get("ports") or [{"containerPort": 8080}])[0]["containerPort"]
            rev = f"{service}-{revision:05d}"
            env += [
                {"name": "PORT", "value": str(port)},
                {"name": "K_SERVICE", "value": service},
                {"name": "K_CONFIGURATION", "value": service},
                {"name": "K_REVISION", "value": rev},
            ]
        labels = {
            **(isvc["metadata"].get("labels") or {}),
            **(spec.get("labels") or {}),
            "serving.kserve.io/inferenceservice": name,
            "component": component,
        }
        if serverless:
            labels["serving.knative.dev/revision"] = f"{service}-{revision:05d}"
        pod_spec = {k: v for k, v in spec.items() if k in ("volumes", "serviceAccountName")}
        pod_spec["containers"] = [container]
        out.append(
            {"name": f"{service}-{revision:05d}", "component": component, "labels": labels, "spec": pod_spec}
        )
    return out


def services(isvc: dict[str, Any], made: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Service name → the pod it routes to (port 80 → the container's first port)."""
    name = isvc["metadata"]["name"]
    by_component = {p["component"]: p for p in made}
    out = {f"{name}-{c}": p for c, p in by_component.items()}
    out[name] = by_component.get("transformer") or by_component["predictor"]
    return out
