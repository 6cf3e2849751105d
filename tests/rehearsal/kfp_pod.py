"""The env KFP gives a pipeline step's pod: the compiled pipeline's kubernetes platform spec, resolved.

KFP's driver patches each executor's pod with its ``platforms.kubernetes.deploymentSpec.executors.<label>``
config (kubeflow/pipelines backend/src/v2/driver/k8s.go, ``extendPodSpecPatch``, KFP 2.x): every ``keyToEnv``
of a ``secretAsEnv`` entry, then of a ``configMapAsEnv`` entry, becomes an env var of the user container with
``valueFrom.secretKeyRef`` / ``configMapKeyRef`` (the name from ``*Name`` or the constant
``*NameParameter.runtimeValue``, ``optional`` from the entry); ``fieldPathAsEnv`` becomes a downward-API var.
The kubelet then reads those objects in the pod's namespace (the run namespace): a missing ConfigMap, Secret
or key that is not optional keeps the container from starting (``CreateContainerConfigError``), which is what
:func:`kfp_pod_env` raises as :class:`MissingReference`.
"""

from __future__ import annotations

import base64
from typing import Any

RUN_NAMESPACE = "kubeflow"  # the chart's kubeflow.runNamespace default


class MissingReference(LookupError):
    """The pod refers to a ConfigMap, Secret or key the rendered chart does not hold in the run namespace."""


def _documents(compiled: dict[str, Any] | list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, platform spec) of a compiled package: its documents, or a dict holding one or both."""
    docs = [compiled] if isinstance(compiled, dict) else [d for d in compiled if d]
    pipeline = next((d for d in docs if "root" in d), {})
    platform = next((d for d in docs if "platforms" in d), {})
    return pipeline, platform


def _executor_label(pipeline: dict[str, Any], component: str) -> str:
    """The executor of a root-DAG task (``train`` → ``exec-train``), as the pipeline spec names it."""
    if not pipeline:
        return f"exec-{component}"  # the compiler's naming, when only the platform spec is given
    tasks = pipeline["root"]["dag"]["tasks"]
    if component not in tasks:
        raise KeyError(f"no task {component!r} in the pipeline; tasks: {sorted(tasks)}")
    return pipeline["components"][tasks[component]["componentRef"]["name"]]["executorLabel"]


def _name(entry: dict[str, Any], kind: str) -> str:
    parameter = entry.get(f"{kind}NameParameter")
    if parameter is not None:
        if "runtimeValue" not in parameter:
            raise NotImplementedError(f"{kind} name from a pipeline parameter: {parameter}")
        return str(parameter["runtimeValue"]["constant"])
    return str(entry[f"{kind}Name"])


def _objects(docs: list[dict[str, Any]], kind: str, namespace: str) -> dict[str, dict[str, str]]:
    """Name → data of the rendered ConfigMaps or Secrets of ``namespace`` (Secret data decoded)."""
    out: dict[str, dict[str, str]] = {}
    for doc in docs:
        if doc.get("kind") != kind or doc["metadata"].get("namespace") != namespace:
            continue
        data = dict(doc.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(doc.get("stringData") or {})
        out[doc["metadata"]["name"]] = data
    return out


def kfp_pod_env(
    compiled: dict[str, Any] | list[dict[str, Any]],
    docs: list[dict[str, Any]],
    component: str,
    *,
    namespace: str = RUN_NAMESPACE,
) -> dict[str, str]:
    """The env vars KFP's platform config gives ``component``'s pod, with values from the rendered chart.

    Args:
        compiled: The compiled pipeline: its YAML documents (pipeline spec, platform spec) as a list, or a
            dict holding both (or the platform spec alone: then the executor is ``exec-<component>``).
        docs: The objects ``helm template`` rendered (ConfigMaps and Secrets are read from them).
        component: The task of the pipeline's root DAG, e.g. ``train``.
        namespace: The run namespace: where the pod runs and its ConfigMaps and Secrets are looked up.

    Returns:
        Env var name → value. Only what the platform config adds; the image's and KFP's own env are not here.

    Raises:
        MissingReference: A ConfigMap, Secret or key the pod needs is not rendered in ``namespace`` (and the
            entry is not optional): the pod would not start.
    """
    pipeline, platform = _documents(compiled)
    kubernetes = platform.get("platforms", {}).get("kubernetes", {})
    executors = kubernetes.get("deploymentSpec", {}).get("executors", {})
    config = executors.get(_executor_label(pipeline, component), {})
    env: dict[str, str] = {}
    for field, kind, key_field in (
        ("secretAsEnv", "Secret", "secretKey"),
        ("configMapAsEnv", "ConfigMap", "configMapKey"),
    ):
        available = _objects(docs, kind, namespace)
        name_kind = "secret" if kind == "Secret" else "configMap"
        for entry in config.get(field, []):
            name, optional = _name(entry, name_kind), bool(entry.get("optional", False))
            data = available.get(name)
            for pair in entry.get("keyToEnv", []):
                key = pair[key_field]
                if data is not None and key in data:
                    env[pair["envVar"]] = data[key]
                elif not optional:
                    missing = f"{kind} {namespace}/{name}" + ("" if data is None else f" key {key}")
                    raise MissingReference(f"{component}: {missing} is not rendered")
    for entry in config.get("fieldPathAsEnv", []):
        if entry["fieldPath"] != "metadata.namespace":
            raise NotImplementedError(f"downward API field {entry['fieldPath']}")
        env[entry["name"]] = namespace
    return env
